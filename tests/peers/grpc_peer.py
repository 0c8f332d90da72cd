"""A gRPC server and client (grpcio) for rf-tap's tests, with protobuf messages encoded by
hand (no .proto files, as rf-tap decodes them).

  grpc_peer.py serve ADDR PORT VERSION   service shop.Users until killed; prints "ready"
  grpc_peer.py call ADDR PORT            makes the calls below; prints one JSON line per call

shop.Users:
  Get(1: name)           -> {1: name, 2: {1: 42}}   (VERSION 2 answers 2.1 = 43)
  Missing(1: name)       -> NOT_FOUND "no such user: <name>"
  List(1: n)             -> n messages {1: i, 2: "item-i-xxx..."}  (server streaming, gzip)
  Upload(stream {1: x})  -> {1: count, 2: sum}   (client streaming; VERSION 2: INTERNAL)
"""
import json
import sys
from concurrent import futures

import grpc


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num, v):
    return varint(num << 3) + varint(v)


def field_bytes(num, b):
    if isinstance(b, str):
        b = b.encode()
    return varint(num << 3 | 2) + varint(len(b)) + b


def read_fields(b):
    """{number: [values]} of a message (varints and length-delimited only)."""
    out, i = {}, 0
    while i < len(b):
        tag, i = read_varint(b, i)
        num, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = read_varint(b, i)
        elif wt == 2:
            n, i = read_varint(b, i)
            v, i = b[i:i + n], i + n
        else:
            raise ValueError("wire type %d" % wt)
        out.setdefault(num, []).append(v)
    return out


def read_varint(b, i):
    v, shift = 0, 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return v, i


def serve(addr, port, version):
    def get(req, ctx):
        name = read_fields(req).get(1, [b""])[0]
        return field_bytes(1, name) + field_bytes(2, field_varint(1, 43 if version == 2 else 42))

    def missing(req, ctx):
        name = read_fields(req).get(1, [b""])[0].decode()
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such user: " + name)

    def list_(req, ctx):
        ctx.set_compression(grpc.Compression.Gzip)
        n = read_fields(req).get(1, [0])[0]
        for i in range(n):
            # Long enough that gzip pays (grpc sends what does not shrink uncompressed).
            yield field_varint(1, i) + field_bytes(2, "item-%d-" % i + "x" * 400)

    def upload(reqs, ctx):
        xs = [read_fields(r).get(1, [0])[0] for r in reqs]
        if version == 2:
            ctx.abort(grpc.StatusCode.INTERNAL, "upload broke")
        return field_varint(1, len(xs)) + field_varint(2, sum(xs))

    handler = grpc.method_handlers_generic_handler("shop.Users", {
        "Get": grpc.unary_unary_rpc_method_handler(get),
        "Missing": grpc.unary_unary_rpc_method_handler(missing),
        "List": grpc.unary_stream_rpc_method_handler(list_),
        "Upload": grpc.stream_unary_rpc_method_handler(upload),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port("%s:%d" % (addr, port))
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(addr, port):
    ch = grpc.insecure_channel("%s:%d" % (addr, port))
    grpc.channel_ready_future(ch).result(timeout=10)

    def report(method, code, messages, details=""):
        print(json.dumps({"method": method, "code": code, "details": details,
                          "messages": [m.hex() for m in messages]}), flush=True)

    get = ch.unary_unary("/shop.Users/Get")
    for name in ["alice", "bob"]:
        r = get(field_bytes(1, name), timeout=10)
        report("Get", 0, [r])
    try:
        ch.unary_unary("/shop.Users/Missing")(field_bytes(1, "zoe"), timeout=10)
        report("Missing", 0, [])
    except grpc.RpcError as e:
        report("Missing", e.code().value[0], [], e.details())
    rs = list(ch.unary_stream("/shop.Users/List")(field_varint(1, 3), timeout=10))
    report("List", 0, rs)
    try:
        r = ch.stream_unary("/shop.Users/Upload")(
            iter([field_varint(1, x) for x in (5, 7, 9)]), timeout=10)
        report("Upload", 0, [r])
    except grpc.RpcError as e:
        report("Upload", e.code().value[0], [], e.details())
    ch.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        call(sys.argv[2], int(sys.argv[3]))
