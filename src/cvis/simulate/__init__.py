"""Traffic simulator: scripted vehicles and pedestrians publishing live state, checking warnings.

``cvis simulate traffic`` drives the vehicles of a scenario (TOML, see
:mod:`cvis.simulate.scenario`), publishes their ``state/1`` at 10 Hz and an
RSU's object list as agents would, receives their warnings and reports
latency and which expected warnings were missed or spurious. Without a
broker it runs the hazard engine in-process on simulated time, much faster
than real time.
"""
