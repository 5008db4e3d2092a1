"""One module per `sortflow` command: each has one entry function that the CLI and the flows both call."""
