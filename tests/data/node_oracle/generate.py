"""Inputs for the Node JSON.parse oracle: valid EML-like bodies and random mutations of them.

Regenerate the recorded verdicts (Node 20, as the original server ran) from this folder with
``python3 generate.py && node record.js``; tests/test_nodejson.py compares against node20.json and
node20_hostile.json (hostile bodies: 100 KiB shapes and nesting too deep for msgspec).
"""

import json
import random

random.seed(7)
base = [
    '{"callID":"a","rclassification":"Sales","callTime":"35"}',
    '{"a":[1,2,{"b":null}],"c":true}',
    "[1,2,3]",
    "{}",
    "[]",
    '{"x":"\\u00e9\\n\\"q\\""}',
    '{"n":-1.5e+10}',
    '{"s":"😀 ok"}',
]
cases = set()
chars = list('{}[],:"\\ntfu0123456789.-+eE x\t\x01😀é#/') + ["\\u12", "null", "true", "tru", "\\ud800"]
for b in base:
    cases.add(b)
    for _ in range(200):
        s = list(b)
        op = random.random()
        i = random.randrange(len(s) + 1)
        if op < 0.3 and s:
            del s[min(i, len(s) - 1)]
        elif op < 0.6:
            s.insert(i, random.choice(chars))
        elif op < 0.8:
            s = s[:i]
        else:
            s[min(i, len(s) - 1) if s else 0 :] = [random.choice(chars)] + s[i:]
        cases.add("".join(s))
extra = [
    "{",
    "[",
    "",
    " ",
    "null",
    "42",
    '"x"',
    "true",
    "[object Object]",
    "NaN",
    "  nul",
    '{"a":01}',
    "[-]",
    "[1.]",
    "[1e]",
    '["\\x"]',
    '{"a" 1}',
    '{"a":1,}',
    "[1,]",
    "[1] 2",
    "x" * 40,
    '"' + "a" * 30 + '"',
    "[1, 2, 3, 4, 5, 6, 7, 8, x, 10, 11, 12]",
    '["😀", x, 1, 2, 3, 4, 5, 6, 7]',
    '{"a":"\x1f"}',
    "\n\n[",
    '{"a":1}}',
    "[" * 30 + "]" * 29,
]
cases.update(extra)
with open("inputs.json", "w") as f:
    json.dump(sorted(cases), f, ensure_ascii=False)
print(len(cases), "inputs")

# Hostile bodies: full-size (100 KiB) shapes and deep ones msgspec cannot nest, each kept as parts
# [text, times] so the recordings stay small. ``node record.js`` writes node20_hostile.json from them.
N = 102400


def fill(prefix, unit, suffix=""):
    return [[prefix, 1], [unit, (N - len(prefix) - len(suffix)) // len(unit)], [suffix, 1]]


def peak(h):
    return "[" * h + "0" + "]" * h


hostile = [
    fill("", "["),
    fill("", '{"a":'),
    fill("", '{"a":['),
    fill("", '{"k":[[{"k":{"k":[{"k":[[[{"k":'),
    fill("", "[", "x"),
    fill("", '{"a":', "}"),
    fill("", '{"a":[', "]}"),
    [["[", N // 2 - 2], ["]", N // 2 - 2], [",x", 1]],
    [["[", N // 2 - 2], ["]", N // 2 - 1], [",1]", 1]],
    [
        ['{"x":', 1],
        ["[", N // 2 - 60],
        ["]", N // 2 - 60],
        [',"callID":"a","rclassification":"S","callTime":"1",}', 1],
    ],
    [
        ['{"x":', 1],
        ['{"a":[', N // 14],
        ["]}", N // 14],
        [',"callID":"a","rclassification":"S","callTime":"1"}', 1],
    ],
    [["[", N // 2], ["}", N // 2]],
    [["[", N // 2 - 4], ["1,}", 1]],
    fill("[", "1,", "}"),
    fill("[", "1,", "1"),
    fill("[", '"a",', "x"),
    fill("{", '"a":1,', "}"),
    fill("{", '"a":1,', '"b" 1}'),
    fill('["', "a", '\\x"]'),
    fill('["', "\\n", '\\x"]'),
    fill('["', "\\\\", '\\x"]'),
    fill('["', "a"),
    fill('["', "\\n", "\\"),
    fill('["', "a", '\\u12"]'),
    fill('["', "a", '\u0001"]'),
    fill('["', "é😀", '\\x"]'),
    fill("[", "\ufffd"),
    fill('{"callID":"a","rclassification":"S","callTime":"1","n":', "1", "}"),
    fill("[", "1", ".]"),
    fill("[-", "9", "}"),
    fill("[1e", "9", "]"),
    fill("[0.", "5", "e]"),
    fill('{"callID":"s","rclassification":"S","callTime":"1","x":[', '"\\ud800",', "1]}"),
    fill("[", '"\\udc00",', "}"),
    fill("[", '"\\ud83d\\ude00",', "}"),
    fill("[", '"\\ud800\\u",', "}"),
    fill("[", "[],", "x"),
    fill("[", "{},", "x"),
    fill("[", "[[[0]]],", "x"),
    fill("[", " ", "x"),
    fill("[1", ","),
    fill("[", '"[[[{{{",', "x"),
    fill("", '["]]]",'),
    fill("", '{"\\"\\\\[":'),
    [["[", 1000], ["[[0]],", (N - 1000) // 6], ["x", 1]],
    [["[", 1000], [peak(8) + ",", (N - 1000) // 18], ["x", 1]],
    [["[", 1000], [peak(24) + ",", (N - 1000) // 50], ["x", 1]],
    [['{"a":', 1000], ['"k":1,', (N - 5000) // 6], ["}", 1]],
    fill("[", peak(4) + ",["),
    fill("[", peak(12) + ",["),
    fill("[", peak(30) + ",["),
    fill("", '{"p":' + peak(12) + ',"q":'),
    fill("", "[1,1,1,1,"),
    fill("", "[[],"),
    [["[", 100], ["[1],", (N - 400) // 4], ["[1]", 1], ["]", 100], ["x", 1]],
    [['{"a":', 60], ["[1],", (N - 800) // 4], ["[1]", 1], ["}", 59], ["]", 1]],
]
templates = [
    ("[", "]"),
    ('{"k":', "}"),
    ('{"a":[', "]}"),
    ("[1,", "]"),
    ('{"k":' + peak(3) + ',"v":', "}"),
    ("[" + peak(5) + ",", "]"),
]
for opening, closing in templates:
    for depth in (700, 1500, 4000):
        for _ in range(6):
            cut = random.choice(["top", "middle", "bottom", "closing", "end"])
            head = [[opening, depth]]
            closers = [[closing, depth]]
            junk = random.choice(
                ["x", "}", "]", ",", ":", '"', "1", "tru", ",]", "\\", " ", "[", "{", "01", "-", '"\\q"']
            )
            if cut == "top":
                parts = [[opening, 3], [junk, 1], [opening, depth], [closing, depth + 3]]
            elif cut == "middle":
                parts = [[opening, depth // 2], [junk, 1], [opening, depth // 2], [closing, depth]]
            elif cut == "bottom":
                parts = head + [[junk, 1]] + closers
            elif cut == "closing":
                parts = head + [[closing, depth // 2], [junk, 1], [closing, depth // 2]]
            else:
                parts = head + closers + [[random.choice([",1", " x", "]", "}", "", ","]), 1]]
            hostile.append(parts)
        hostile.append([[opening, depth]])
        hostile.append([[opening, depth], ["0", 1], [closing, depth]])
        hostile.append(
            [
                ['{"x":', 1],
                [opening, depth],
                ["0", 1],
                [closing, depth],
                [',"callID":"\\ud800","rclassification":"S","callTime":"35"}', 1],
            ]
        )
with open("hostile_inputs.json", "w") as f:
    json.dump(hostile, f, ensure_ascii=False)
print(len(hostile), "hostile inputs")
