"""A cleartext HTTP/2 server that accepts `Upgrade: h2c` (RFC 7540 3.2), for rf-tap's tests.

Usage: h2c_server.py ADDR PORT

GET /size/N answers N bytes of 'u'; anything else 404. Requests on the upgraded connection
and on later streams are both answered. One thread per connection; it runs until killed.
"""
import socket
import sys
import threading

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def body_for(path):
    if path.startswith("/size/"):
        try:
            return 200, b"u" * int(path[len("/size/"):])
        except ValueError:
            pass
    return 404, b"not found\n"


class Conn:
    """One HTTP/2 connection: bodies still to send, by stream, sent as windows allow."""

    def __init__(self, sock, conn):
        self.sock, self.conn, self.pending = sock, conn, {}

    def respond(self, stream_id, path):
        status, body = body_for(path)
        self.conn.send_headers(
            stream_id,
            [(":status", str(status)), ("content-length", str(len(body))),
             ("content-type", "text/plain")],
        )
        self.pending[stream_id] = body
        self.pump()

    def pump(self):
        for stream_id in list(self.pending):
            body = self.pending[stream_id]
            try:
                while body:
                    room = min(self.conn.local_flow_control_window(stream_id),
                               self.conn.max_outbound_frame_size)
                    if room <= 0:
                        break
                    self.conn.send_data(stream_id, body[:room])
                    body = body[room:]
                if body:
                    self.pending[stream_id] = body
                else:
                    del self.pending[stream_id]
                    self.conn.end_stream(stream_id)
            except h2.exceptions.StreamClosedError:
                del self.pending[stream_id]
        self.sock.sendall(self.conn.data_to_send())

    def receive(self, data):
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                path = dict((k.decode(), v.decode()) for k, v in ev.headers).get(":path", "/")
                self.respond(ev.stream_id, path)
            elif isinstance(ev, h2.events.StreamReset):
                self.pending.pop(ev.stream_id, None)
        self.pump()


def serve(sock):
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65535)
        if not data:
            return
        buf += data
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("upgrade", "").lower() != "h2c":
        sock.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n")
        return
    sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    conn.initiate_upgrade_connection(headers.get("http2-settings", ""))
    c = Conn(sock, conn)
    # curl 7.88 keeps at most 32 KiB that arrive right behind the 101: stream 1 is
    # answered once the client's preface has come.
    data = rest or sock.recv(65535)
    if not data:
        return
    c.receive(data)
    c.respond(1, path)
    while True:
        data = sock.recv(65535)
        if not data:
            return
        c.receive(data)

def main():
    addr, port = sys.argv[1], int(sys.argv[2])
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((addr, port))
    ls.listen(64)
    print("ready", flush=True)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=run, args=(s,), daemon=True).start()


def run(sock):
    try:
        serve(sock)
    except (ConnectionError, OSError):
        pass  # the client went away
    finally:
        sock.close()


if __name__ == "__main__":
    main()
