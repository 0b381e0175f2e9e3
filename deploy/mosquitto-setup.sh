#!/bin/sh
# Rallycast's settings for Debian's own mosquitto (Debian 12, Raspberry Pi OS), installed the
# Debian way: a file in /etc/mosquitto/conf.d/, Debian's mosquitto.conf left as it is.
# Run as root from the repository: sh deploy/mosquitto-setup.sh. Then add the users and
# restart mosquitto (docs/broker.md, "Running on mosquitto instead"). Safe to run again: it
# replaces the settings and the ACL, never the users.
set -eu
ETC=${ETC:-/etc/mosquitto}   # the tests point this at a temporary directory
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "run it as root: sudo sh deploy/mosquitto-setup.sh" >&2; exit 1
fi
if [ ! -d "$ETC/conf.d" ] || ! id mosquitto >/dev/null 2>&1; then
  echo "no $ETC/conf.d or no user mosquitto: apt-get install mosquitto first" >&2; exit 1
fi
# Debian's mosquitto.conf sets persistence_location (/var/lib/mosquitto/) and reads every
# conf.d/*.conf; mosquitto refuses to start when a file repeats that line, so ours goes in
# without it.
sed -e '/^persistence_location /d' -e "s#/etc/mosquitto/#$ETC/#" mosquitto.conf \
  > "$ETC/conf.d/rallycast.conf"
chmod 0644 "$ETC/conf.d/rallycast.conf"
# mosquitto reads the ACL and the password file after it has left root for user mosquitto:
# group mosquitto may read them, only root may change them, nobody else may read the hashes.
install -o root -g mosquitto -m 0640 mosquitto.acl "$ETC/rallycast.acl"
if [ ! -e "$ETC/rallycast.passwd" ]; then
  install -o root -g mosquitto -m 0640 /dev/null "$ETC/rallycast.passwd"
fi
echo "installed $ETC/conf.d/rallycast.conf and $ETC/rallycast.acl; users: $ETC/rallycast.passwd"
