"""Sensor sources behind one small protocol: CSV replay, a pump simulator, Modbus and OPC UA."""

from edge_node.sources.base import Block, Source, SourceError
from edge_node.sources.csv_replay import CsvReplay
from edge_node.sources.simulator import CHANNELS, Fault, PumpSimulator, parse_fault

__all__ = [
    "CHANNELS",
    "Block",
    "CsvReplay",
    "Fault",
    "PumpSimulator",
    "Source",
    "SourceError",
    "parse_fault",
]
