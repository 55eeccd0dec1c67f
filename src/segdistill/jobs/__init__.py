"""Jobs: one module per command, the only code that decides a command's output folder and writes
it. Each takes settings (a Config, paths, flags) and calls the library (data, models, engine,
inference); the library never imports a job. docs/architecture.md shows the layers."""
