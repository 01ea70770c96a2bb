"""The process: HTTP app, server, CLI, config loading and reload, metrics, logs."""
