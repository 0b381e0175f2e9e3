"""Reconnect delays, in one place: every MQTT client Rallycast ships finds a restarted broker
again within seconds. paho's ``reconnect_delay_set(min, max)`` waits ``min`` seconds after a
lost connection, doubling up to ``max``.

Who uses which (seconds):

- the scorer service (``scorer/service.py``) and ``ScoreClient`` (``scorer/client.py``,
  ``rallycast score``): 1, doubling to 4;
- ``rallycast buttons`` (``scorer/buttons/runner.py``): 1, doubling to 8;
- the live pages keep their own in JavaScript: mqtt.js retries every ``reconnectPeriod``
  1000 ms (``viewer/static/live.js``, ``connect``), a fixed period with no doubling.
"""

from __future__ import annotations

RECONNECT_MIN_DELAY = 1
RECONNECT_MAX_DELAY = 4
BOARDS_RECONNECT_MAX_DELAY = 8
