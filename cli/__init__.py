"""The `skyedge` command: the one place that imports library, stages and flows, lazily per command."""
