"""Inputs for the Node JSON.parse oracle: valid EML-like bodies and random mutations of them.

Regenerate the recorded verdicts (Node 20, as the original server ran) from this folder with
``python3 generate.py && node record.js``; tests/test_nodejson.py compares against node20.json.
"""
import json
import random

random.seed(7)
base = ['{"callID":"a","rclassification":"Sales","callTime":"35"}', '{"a":[1,2,{"b":null}],"c":true}', '[1,2,3]', '{}', '[]',
        '{"x":"\\u00e9\\n\\"q\\""}', '{"n":-1.5e+10}', '{"s":"😀 ok"}']
cases = set()
chars = list('{}[],:"\\ntfu0123456789.-+eE x\t\x01😀é#/') + ["\\u12", "null", "true", "tru", "\\ud800"]
for b in base:
    cases.add(b)
    for _ in range(200):
        s = list(b)
        op = random.random()
        i = random.randrange(len(s) + 1)
        if op < 0.3 and s: del s[min(i, len(s)-1)]
        elif op < 0.6: s.insert(i, random.choice(chars))
        elif op < 0.8: s = s[:i]
        else: s[min(i, len(s)-1) if s else 0:] = [random.choice(chars)] + s[i:]
        cases.add("".join(s))
extra = ["{", "[", "", " ", "null", "42", '"x"', "true", "[object Object]", "NaN", "  nul", '{"a":01}', '[-]', '[1.]', '[1e]', '["\\x"]',
         '{"a" 1}', '{"a":1,}', '[1,]', '[1] 2', 'x'*40, '"' + 'a'*30 + '"', '[1, 2, 3, 4, 5, 6, 7, 8, x, 10, 11, 12]',
         '["😀", x, 1, 2, 3, 4, 5, 6, 7]', '{"a":"\x1f"}', '\n\n[', '{"a":1}}', '[' * 30 + ']' * 29]
cases.update(extra)
with open("inputs.json", "w") as f:
    json.dump(sorted(cases), f, ensure_ascii=False)
print(len(cases), "inputs")
