"""Device protocols (sans-IO parsers), serial/CAN transports and device simulators."""
