"""Tools the tests share (the pytest fixtures that use them are in ``tests/brokers.py``):

- ``clients.py``: paho clients that record what arrives (``Recorder``, ``Received``) and the
  raw MQTT 3.1.1 client for what a library would hide (``RawClient``, from
  ``rallycast/bench/wire.py``, which the benchmarks use too);
- ``endpoints.py``: ``BrokerEndpoint`` (what a broker fixture yields) and the test users;
- ``bench.py``: ``run_bench``, a bench verb run in-process with its status and output;
- ``runners.py``: brokers in a thread or as subprocesses, built on
  ``rallycast/bench/launch.py`` (one launcher, one stop-then-kill, one mosquitto.conf rewrite
  for the benchmarks and the tests; runtime code never imports ``tests``).
"""
