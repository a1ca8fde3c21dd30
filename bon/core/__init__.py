"""bon's core: records, files, the run directory, configs, errors and registries; imports nothing above it."""
