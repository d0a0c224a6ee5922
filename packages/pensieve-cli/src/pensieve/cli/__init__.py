"""The `pensieve` command: start/stop/status/logs, models, config, bench, service files, doctor."""
