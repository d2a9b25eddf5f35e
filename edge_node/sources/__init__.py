"""Sensor sources behind one small protocol: CSV replay and a pump simulator."""

from edge_node.sources.base import Block, Source, SourceError, normalise_channel
from edge_node.sources.csv_replay import CsvData, CsvReplay, read_csv, write_csv
from edge_node.sources.simulator import CHANNELS, Fault, PumpSimulator, parse_fault

__all__ = [
    "CHANNELS",
    "Block",
    "CsvData",
    "CsvReplay",
    "Fault",
    "PumpSimulator",
    "Source",
    "SourceError",
    "normalise_channel",
    "parse_fault",
    "read_csv",
    "write_csv",
]
