// A parser for the GraphQL that Prisma Client Python's query builder writes
// (prisma/_builder.py): one operation, aliased root fields, arguments made of
// JSON literals, and nested selection sets. It is not a general GraphQL parser:
// no variables, fragments, directives or block strings, because the builder
// never writes them, and anything else is rejected with a clear error.

export class GraphQLSyntaxError extends Error {}

/** An integer too large for a JS number, kept as its source text so no digit is lost. */
export class BigIntLiteral {
  constructor(text) {
    this.text = text;
  }
}

/** A bare name in value position (a GraphQL enum value). */
export class EnumLiteral {
  constructor(name) {
    this.name = name;
  }
}

const PUNCTUATION = new Set(['{', '}', '(', ')', '[', ']', ':']);
const NUMBER = /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y;

// Character codes, compared directly: the tokenizer runs over every request the client sends.
const isNameStart = (c) => (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || c === 95; // A-Z a-z _
const isNameChar = (c) => isNameStart(c) || (c >= 48 && c <= 57); // and 0-9

function tokenize(source) {
  const tokens = [];
  const length = source.length;
  let i = 0;
  while (i < length) {
    const code = source.charCodeAt(i);
    const c = source[i];
    if (code === 32 || code === 10 || code === 9 || code === 13 || code === 44 || code === 0xfeff) {
      i++;
    } else if (c === '#') {
      while (i < length && source[i] !== '\n') i++;
    } else if (PUNCTUATION.has(c)) {
      tokens.push({ kind: c, at: i });
      i++;
    } else if (c === '"') {
      const start = i;
      let plain = true; // no escapes and no control characters: the text is the value
      i++;
      while (i < length) {
        const s = source.charCodeAt(i);
        if (s === 34) break; // "
        if (s === 92) {
          plain = false;
          i++;
        } else if (s < 32) {
          if (s === 10) throw new GraphQLSyntaxError(`unterminated string at ${start}`);
          plain = false;
        }
        i++;
      }
      if (i >= length) throw new GraphQLSyntaxError(`unterminated string at ${start}`);
      i++;
      let value;
      if (plain) {
        value = source.slice(start + 1, i - 1);
      } else {
        try {
          // The builder writes strings with json.dumps, so JSON's escapes apply.
          value = JSON.parse(source.slice(start, i));
        } catch {
          throw new GraphQLSyntaxError(`invalid string literal at ${start}`);
        }
      }
      tokens.push({ kind: 'string', value, at: start });
    } else if (c === '-' || (code >= 48 && code <= 57)) {
      NUMBER.lastIndex = i;
      const match = NUMBER.exec(source);
      if (!match) throw new GraphQLSyntaxError(`invalid number at ${i}`);
      tokens.push({ kind: 'number', text: match[0], at: i });
      i += match[0].length;
    } else if (isNameStart(code)) {
      const start = i;
      while (i < length && isNameChar(source.charCodeAt(i))) i++;
      tokens.push({ kind: 'name', value: source.slice(start, i), at: start });
    } else {
      throw new GraphQLSyntaxError(`unexpected character ${JSON.stringify(c)} at ${i}`);
    }
  }
  tokens.push({ kind: 'eof', at: length });
  return tokens;
}

function numberValue(text) {
  if (/^-?\d+$/.test(text)) {
    const n = Number(text);
    return Number.isSafeInteger(n) ? n : new BigIntLiteral(text);
  }
  return Number(text);
}

class Parser {
  constructor(source) {
    this.tokens = tokenize(source);
    this.pos = 0;
  }

  peek() {
    return this.tokens[this.pos];
  }

  next() {
    return this.tokens[this.pos++];
  }

  expect(kind) {
    const token = this.next();
    if (token.kind !== kind) {
      throw new GraphQLSyntaxError(`expected ${kind} but found ${token.kind} at ${token.at}`);
    }
    return token;
  }

  document() {
    const op = this.expect('name').value;
    if (op !== 'query' && op !== 'mutation') {
      throw new GraphQLSyntaxError(`unsupported operation type ${JSON.stringify(op)}`);
    }
    const fields = this.selectionSet();
    this.expect('eof');
    return { operation: op, fields };
  }

  selectionSet() {
    this.expect('{');
    const fields = [];
    while (this.peek().kind !== '}') fields.push(this.field());
    this.next();
    return fields;
  }

  field() {
    let name = this.expect('name').value;
    let alias = null;
    if (this.peek().kind === ':') {
      this.next();
      alias = name;
      name = this.expect('name').value;
    }
    const args = this.peek().kind === '(' ? this.arguments() : null;
    const selection = this.peek().kind === '{' ? this.selectionSet() : null;
    return { alias, name, args, selection };
  }

  key() {
    const token = this.expect('name');
    // No Prisma field has this name, and as a plain-object key it would set the prototype.
    if (token.value === '__proto__') throw new GraphQLSyntaxError(`invalid name __proto__ at ${token.at}`);
    return token.value;
  }

  arguments() {
    this.expect('(');
    const args = {};
    while (this.peek().kind !== ')') {
      const key = this.key();
      this.expect(':');
      args[key] = this.value();
    }
    this.next();
    return args;
  }

  value() {
    const token = this.next();
    switch (token.kind) {
      case 'string':
        return token.value;
      case 'number':
        return numberValue(token.text);
      case 'name':
        if (token.value === 'true') return true;
        if (token.value === 'false') return false;
        if (token.value === 'null') return null;
        return new EnumLiteral(token.value);
      case '[': {
        const items = [];
        while (this.peek().kind !== ']') items.push(this.value());
        this.next();
        return items;
      }
      case '{': {
        const object = {};
        while (this.peek().kind !== '}') {
          const key = this.key();
          this.expect(':');
          object[key] = this.value();
        }
        this.next();
        return object;
      }
      default:
        throw new GraphQLSyntaxError(`unexpected ${token.kind} at ${token.at}`);
    }
  }
}

/** Parse one builder document into `{operation, fields: [{alias, name, args, selection}]}`. */
export function parseDocument(source) {
  if (typeof source !== 'string') throw new GraphQLSyntaxError('query must be a string');
  return new Parser(source).document();
}
