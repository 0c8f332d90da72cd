#!/usr/bin/env bash
# Re-creates the captures in pcaps/ with rf-tap itself (run as root from the repository
# root after `cargo build --release -p rf-tap`). Uses namespaces ma/mb and /tmp/mw.
set -euo pipefail
ip netns add ma; ip netns add mb
ip -n ma link add v0 type veth peer name v1 netns mb
ip -n ma link set v0 address 02:00:00:00:00:01; ip -n mb link set v1 address 02:00:00:00:00:02
ip -n ma addr add 10.9.0.1/24 dev v0; ip -n mb addr add 10.9.0.2/24 dev v1
ip -n ma link set v0 up; ip -n mb link set v1 up; ip -n ma link set lo up; ip -n mb link set lo up
mkdir -p /tmp/mw/www/api/users; for i in 1 2 3; do echo "{\"id\":\"u_$i\",\"name\":\"user $i\"}" > /tmp/mw/www/api/users/u_$i; done
cat > /tmp/mw/nginx.conf <<EOC
worker_processes 1; daemon off; user root; pid /tmp/mw/nginx.pid; error_log /tmp/mw/error.log;
events { worker_connections 64; }
http { access_log off; server { listen 10.9.0.2:80; root /tmp/mw/www; location / { } } }
EOC
ip netns exec mb nginx -c /tmp/mw/nginx.conf & NG=$!
sleep 1
ip netns exec mb ./target/release/rf-tap attach v1 --port 80 -q -w pcaps/http-keepalive-get-post.pcap 2>/tmp/mw/err & RT=$!
sleep 1.5
ip netns exec ma curl -s -o /dev/null http://10.9.0.2/api/users/u_1 -o /dev/null http://10.9.0.2/api/users/u_2 -o /dev/null http://10.9.0.2/api/users/u_3
ip netns exec ma curl -s -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"name":"new user"}' http://10.9.0.2/api/users/u_1
sleep 0.5
kill -INT $RT; wait $RT || true
kill $NG; sleep 0.3
ip netns del ma; ip netns del mb
