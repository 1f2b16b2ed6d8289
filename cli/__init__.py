"""The `transpose` command line: one module per command, each parsing its own arguments and calling the
libraries (`transpose`, `dataops`, `mlops`, `pipelines`) with plain values. `transpose COMMAND --help` documents
every command."""
