"""Record what the original EML server (NestJS 10, global ValidationPipe, Express body-parser on Node 20)
answers to a corpus of requests; tests/test_eml_oracle.py sends the same requests to the gateway.

From this folder:
    npm install @nestjs/core@10 @nestjs/common@10 @nestjs/platform-express@10 class-validator \\
        class-transformer reflect-metadata rxjs typescript@5
    npx tsc; PORT=3999 node dist/main.js &
    python3 record.py 3999 > nest10.jsonl
"""

import base64
import http.client
import itertools
import json
import random
import sys

random.seed(11)
VALUES = {
    "absent": ...,
    "null": None,
    "empty": "",
    "blank": "  ",
    "text": "x",
    "number": 5,
    "true": True,
    "array": [],
    "object": {},
    "strings": ["a"],
}
JSON = "application/json"


def body(fields):
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def cases():
    names = ["callID", "rclassification", "customerID", "callTime"]
    combos = list(itertools.product(VALUES, repeat=4))
    random.shuffle(combos)
    for combo in combos[:300]:
        yield "POST", "/call/request", JSON, body(dict(zip(names, (VALUES[c] for c in combo))))
    ok = {"callID": "c1", "rclassification": "GOTOSUPPORT", "callTime": "35"}
    nf = {"callID": "c1", "rclassification": "Nope", "callTime": "35", "customerID": "k"}
    for raw in [
        b"",
        b" ",
        b"\n",
        b"[]",
        b"[{}]",
        b"{}",
        b"null",
        b"42",
        b'"s"',
        b"true",
        b"{",
        b'{"callID":',
        b'{"a":1,}',
        b'{"a" 1}',
        b'{"a":01}',
        b"[1,]",
        b'{"a":1} x',
        b"\xef\xbb\xbf" + body(ok),
        b'{"callID":"x\xff\xfey","rclassification":"GOTOSUPPORT","callTime":"1"}',
        b'{"callID":"d","callID":"dup","rclassification":"GOTOSUPPORT","callTime":"1"}',
        b'{"callID":' + b"[" * 5000 + b"]" * 5000 + b',"rclassification":"S","callTime":"1"}',
        b'{"callID":"s-\\ud800","rclassification":"GOTOSUPPORT","callTime":"1","x":1e400}',
        body(ok),
        body(nf),
        body({**ok, "extra": {"deep": [1]}}),
    ]:
        yield "POST", "/call/request", JSON, raw
    for ctype in [
        None,
        "text/plain",
        "application/xml",
        "application/json; charset=utf-8",
        'application/json; charset="UTF-8"',
        "application/json; charset=ISO-8859-1",
        "application/json; charset=utf-16",
        "application/json;charset=latin1",
        "APPLICATION/JSON",
        "application/vnd.api+json",
        "application/json-patch+json",
        "multipart/form-data; boundary=x",
    ]:
        yield "POST", "/call/request", ctype, body(ok)
    form = "application/x-www-form-urlencoded"
    for raw in [
        b"callID=a&rclassification=GOTOSUPPORT&callTime=3",
        b"callID[]=a&rclassification=S&callTime=1",
        b"callID[a]=1&rclassification=S&callTime=1",
        b"callID=a&callID=b&rclassification=S&callTime=1",
        b"callID=&rclassification=S&callTime=1",
        b"",
        b"garbage%ZZ=1",
    ]:
        yield "POST", "/call/request", form, raw
    yield "POST", "/call/request", form + "; charset=iso-8859-1", b"callID=a"
    for method, path in [
        ("POST", "/call/request/"),
        ("POST", "/CALL/REQUEST"),
        ("POST", "/call/request?x=1"),
        ("POST", "/call/req"),
        ("GET", "/call/request"),
        ("PUT", "/call/request"),
        ("DELETE", "/call/request?a=b"),
        ("POST", "/call"),
        ("POST", "/Call/Request/?q=%20"),
    ]:
        yield method, path, JSON, body(ok)
    padding = 102400 - len(body({**ok, "p": ""}))
    yield "POST", "/call/request", JSON, body({**ok, "p": "a" * padding})  # exactly the limit
    yield "POST", "/call/request", JSON, body({**ok, "p": "a" * (padding + 1)})  # one byte over


def main(port):
    for method, path, ctype, raw in cases():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Content-Length": str(len(raw))}
        if ctype:
            headers["Content-Type"] = ctype
        conn.request(method, path, body=raw, headers=headers)
        r = conn.getresponse()
        print(
            json.dumps(
                {
                    "method": method,
                    "path": path,
                    "content_type": ctype,
                    "body": base64.b64encode(raw).decode(),
                    "status": r.status,
                    "reply_type": r.getheader("content-type"),
                    "reply": r.read().decode("utf-8", "replace"),
                }
            )
        )
        conn.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
