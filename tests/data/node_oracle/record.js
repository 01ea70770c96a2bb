// Records what the original server (Express body-parser json(), strict, on Node 20) says of each input.
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
const out = inputs.map(body => {
  if (body.length === 0) return [body, null, 'empty'];
  const m = FIRST.exec(body); const first = m && m[1];
  if (first !== '{' && first !== '[') return [body, createStrictSyntaxError(body, first), 'strict'];
  try { JSON.parse(body); return [body, null, 'ok'] } catch (e) { return [body, e.message, 'parse'] }
});
fs.writeFileSync('node20.json', JSON.stringify(out, null, 0).replace(/\],\[/g, '],\n['));
