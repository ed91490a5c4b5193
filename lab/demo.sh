#!/usr/bin/env bash
# Show the converged lab working: a connection alice opens on the client reaches the server
# masqueraded, and the router's masquerade log names her from the port and time the server saw.
set -euo pipefail

prefix=nattrail-
server=203.0.113.10
port=8088

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
on() { local host=$1; shift; docker exec "$prefix$host" "$@"; }

on server systemctl stop nattrail-demo-listener 2>/dev/null || true
on server rm -f /run/nattrail-demo-peer

say "1. The server listens on $server:$port and writes down who connected."
on server systemd-run --quiet --collect --unit=nattrail-demo-listener \
  python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", '"$port"')); s.listen(1); s.settimeout(30)
c, peer = s.accept(); open("/run/nattrail-demo-peer", "w").write("%s:%d" % peer)
c.recv(100); c.close()'
for _ in $(seq 50); do on server ss -Hltn "sport = :$port" | grep -q . && break; sleep 0.1; done

say "2. alice, on the client (10.77.0.10), connects to the server through the router."
client_py="import socket, time
s = socket.create_connection(('$server', $port), timeout=5)
print('client: alice connected from %s:%d' % s.getsockname()); s.sendall(b'hi'); time.sleep(1); s.close()"
on client su alice -c "python3 -c $(printf '%q' "$client_py")"
when=$(date -u '+%Y-%m-%d %H:%M:%SZ')

say "3. The server saw the router's outside address, not the client's:"
for _ in $(seq 50); do on server test -s /run/nattrail-demo-peer && break; sleep 0.1; done
echo "server: peer was $(on server cat /run/nattrail-demo-peer)"

say "4. The router's conntrack table holds both tuples of that connection:"
on router conntrack -L -p tcp --dport "$port" 2>/dev/null | tail -n 3

peer=$(on server cat /run/nattrail-demo-peer)
masq_port=${peer##*:}
say "5. The server's admin calls: \"it came from your ${peer%:*}, port $masq_port, at $when\"."
echo "   On the router:  nattrail who --masq-port $masq_port --at '$when'"
for _ in $(seq 100); do
  on router grep -q "\"masq_port\":$masq_port,.*\"user\":\"alice\"" /var/log/nattrail/masq.log && break
  sleep 0.1
done
on router nattrail who --masq-port "$masq_port" --at "$when"

say "The lab is up. Get a shell on a host with:"
for h in router client server scanner; do echo "  docker exec -it $prefix$h bash"; done
echo "Converge again with:   ansible-playbook site.yml   (after: source .venv/bin/activate)"
echo "Tear the lab down with: make lab-down   (and the engine with: make engine-stop)"
