"""The ``cloud-hub`` command line, one module per command group."""
