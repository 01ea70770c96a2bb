// Records what the original server (Express body-parser json(), strict, on Node 20) says of each input:
// inputs.json into node20.json, and the hostile bodies of hostile_inputs.json (parts [text, times]) into
// node20_hostile.json.
// body-parser's json(): strict mode first-character check, then JSON.parse; message as sent to the client.
const fs = require('fs');
const inputs = JSON.parse(fs.readFileSync('inputs.json', 'utf8'));
const FIRST = /^[\x20\x09\x0a\x0d]*([^\x20\x09\x0a\x0d])/;
function createStrictSyntaxError(str, char) {
  var index = str.indexOf(char); var partial = '';
  if (index !== -1) { partial = str.substring(0, index) + '#'; for (var i = index + 1; i < str.length; i++) partial += '#'; }
  try { JSON.parse(partial); throw new SyntaxError('strict violation') }
  catch (e) { return e.message.replace(/#+/g, function (p) { return str.substring(index, index + p.length) }) }
}
function verdict(body) {
  if (body.length === 0) return [body, null, 'empty'];
  const m = FIRST.exec(body); const first = m && m[1];
  if (first !== '{' && first !== '[') return [body, createStrictSyntaxError(body, first), 'strict'];
  try { JSON.parse(body); return [body, null, 'ok'] } catch (e) { return [body, e.message, 'parse'] }
}
const out = inputs.map(verdict);
fs.writeFileSync('node20.json', JSON.stringify(out, null, 0).replace(/\],\[/g, '],\n['));
const hostile = JSON.parse(fs.readFileSync('hostile_inputs.json', 'utf8'));
const recorded = hostile.map(parts => {
  const [, message, stage] = verdict(parts.map(([text, times]) => text.repeat(times)).join(''));
  return [parts, message, stage];
});
fs.writeFileSync('node20_hostile.json', JSON.stringify(recorded, null, 0).replace(/\]\],\[\[\[/g, ']],\n[[['));
