// Translation between the GraphQL protocol that Prisma Client Python speaks and
// the JSON protocol that the WebAssembly engine speaks.
//
// Arguments are the same tree in both protocols, with one catch: the GraphQL
// protocol sends Json values as JSON text in a plain string, while the JSON
// protocol takes a plain string as a JSON *string* value and needs the text
// wrapped as {"$type": "Json"}. Telling them apart needs the input types, so
// arguments are walked alongside the DMMF schema of the same datamodel.

import { BigIntLiteral, EnumLiteral, parseDocument } from './graphql.mjs';

export class TranslationError extends Error {}

const MODEL_ACTIONS = [
  // Longest prefixes first, so that `findUniqueXOrThrow` is not read as `findUnique` of `XOrThrow`.
  ['findUnique', 'OrThrow', 'findUniqueOrThrow'],
  ['findFirst', 'OrThrow', 'findFirstOrThrow'],
  ['findUnique', '', 'findUnique'],
  ['findFirst', '', 'findFirst'],
  ['findMany', '', 'findMany'],
  ['createOne', '', 'createOne'],
  ['createMany', '', 'createMany'],
  ['updateOne', '', 'updateOne'],
  ['updateMany', '', 'updateMany'],
  ['upsertOne', '', 'upsertOne'],
  ['deleteOne', '', 'deleteOne'],
  ['deleteMany', '', 'deleteMany'],
  ['aggregate', '', 'aggregate'],
  ['groupBy', '', 'groupBy'],
];
const RAW_ACTIONS = new Set(['executeRaw', 'queryRaw']);
const JSON_NULL_ENUMS = new Set(['DbNull', 'JsonNull', 'AnyNull']);

/** The parts of the DMMF schema that translation needs, indexed by name. */
export class Schema {
  constructor(dmmf) {
    this.models = new Set(dmmf.datamodel.models.map((m) => m.name));
    this.inputTypes = new Map();
    for (const namespace of Object.values(dmmf.schema.inputObjectTypes)) {
      for (const type of namespace) this.inputTypes.set(type.name, indexFields(type.fields));
    }
    this.outputTypes = new Map();
    for (const namespace of Object.values(dmmf.schema.outputObjectTypes)) {
      for (const type of namespace) this.outputTypes.set(type.name, indexFields(type.fields));
    }
  }

  rootField(operation, name) {
    const root = this.outputTypes.get(operation === 'mutation' ? 'Mutation' : 'Query');
    return root?.get(name);
  }
}

function indexFields(fields) {
  return new Map(fields.map((f) => [f.name, f]));
}

/** Resolve a root field name such as `upsertOneUser` to its model and action. */
export function resolveAction(schema, fieldName) {
  if (RAW_ACTIONS.has(fieldName)) return { modelName: undefined, action: fieldName };
  for (const [prefix, suffix, action] of MODEL_ACTIONS) {
    if (fieldName.startsWith(prefix) && fieldName.endsWith(suffix)) {
      const model = fieldName.slice(prefix.length, fieldName.length - suffix.length);
      if (schema.models.has(model)) return { modelName: model, action };
    }
  }
  throw new TranslationError(`unsupported operation ${JSON.stringify(fieldName)}`);
}

const NO_TYPES = Object.freeze([]);

// What convertValue needs to know about a list of DMMF input types, worked out once per list:
// the DMMF arrays live as long as the schema, and so do the lists derived from them here.
const typeInfo = new WeakMap();

function infoOf(schema, inputTypes) {
  let info = typeInfo.get(inputTypes);
  if (info === undefined) {
    const scalars = inputTypes.filter((t) => t.location === 'scalar' && !t.isList);
    info = {
      listTypes: Object.freeze(inputTypes.filter((t) => t.isList).map((t) => ({ ...t, isList: false }))),
      bigInt: scalars.some((t) => t.type === 'BigInt'),
      json: scalars.some((t) => t.type === 'Json'),
      objectTypes: inputTypes
        .filter((t) => t.location === 'inputObjectTypes' && !t.isList)
        .map((t) => schema.inputTypes.get(t.type))
        .filter(Boolean),
      fieldTypes: new Map(),
    };
    typeInfo.set(inputTypes, info);
  }
  return info;
}

function fieldTypesOf(info, key) {
  let types = info.fieldTypes.get(key);
  if (types === undefined) {
    // Checked and unchecked variants (UserCreateInput, UserUncheckedCreateInput)
    // may both apply; a key's types are the union over the variants that have it.
    types = Object.freeze(info.objectTypes.flatMap((fields) => fields.get(key)?.inputTypes ?? []));
    info.fieldTypes.set(key, types);
  }
  return types;
}

function convertArguments(schema, args, argDefs) {
  const out = {};
  for (const key in args) {
    if (!Object.hasOwn(args, key)) continue;
    const def = argDefs?.get(key);
    out[key] = convertValue(schema, args[key], def ? def.inputTypes : NO_TYPES);
  }
  return out;
}

function convertValue(schema, value, inputTypes) {
  if (value === null) return null;
  const info = infoOf(schema, inputTypes);
  if (Array.isArray(value)) {
    return value.map((item) => convertValue(schema, item, info.listTypes));
  }
  if (value instanceof EnumLiteral) {
    return JSON_NULL_ENUMS.has(value.name) ? { $type: 'Enum', value: value.name } : value.name;
  }
  if (value instanceof BigIntLiteral) {
    return info.bigInt ? { $type: 'BigInt', value: value.text } : value;
  }
  if (typeof value === 'string') {
    return info.json ? { $type: 'Json', value } : value;
  }
  if (typeof value === 'object') {
    const out = {};
    for (const key in value) {
      if (Object.hasOwn(value, key)) out[key] = convertValue(schema, value[key], fieldTypesOf(info, key));
    }
    return out;
  }
  return value;
}

function convertSelection(schema, fields, outputTypeName) {
  const selection = {};
  const outputType = schema.outputTypes.get(outputTypeName);
  for (const field of fields) {
    if (field.alias !== null) throw new TranslationError(`aliases are only supported on the root field`);
    const def = outputType?.get(field.name);
    if (field.args === null && field.selection === null) {
      selection[field.name] = true;
      continue;
    }
    const nested = {};
    if (field.args !== null) nested.arguments = convertArguments(schema, field.args, argsOf(def));
    nested.selection =
      field.selection === null ? {} : convertSelection(schema, field.selection, def?.outputType?.type);
    selection[field.name] = nested;
  }
  return selection;
}

function argsOf(fieldDef) {
  return fieldDef ? indexFields(fieldDef.args ?? []) : undefined;
}

/**
 * Translate one builder document (a single aliased root field) to a JSON
 * protocol request. Returns the request and the alias to answer under.
 */
export function translateQuery(schema, source) {
  const document = parseDocument(source);
  if (document.fields.length !== 1) {
    throw new TranslationError(`expected exactly one root field, got ${document.fields.length}`);
  }
  const [root] = document.fields;
  const { modelName, action } = resolveAction(schema, root.name);
  const def = schema.rootField(document.operation, root.name);
  if (!def) {
    throw new TranslationError(`${root.name} is not a ${document.operation} of this schema`);
  }
  const isRaw = modelName === undefined;
  if (!isRaw && (root.selection === null || root.selection.length === 0)) {
    // The engine panics on an empty selection instead of answering an error.
    throw new TranslationError(`${root.name} needs a selection`);
  }
  const query = {
    // Raw actions take `parameters` as JSON text in both protocols, though the schema calls it Json.
    arguments: isRaw ? { ...root.args } : convertArguments(schema, root.args, argsOf(def)),
    selection: isRaw ? {} : convertSelection(schema, root.selection, def.outputType.type),
  };
  const request = isRaw ? { action, query } : { modelName, action, query };
  return { request, alias: root.alias ?? root.name, field: engineFieldName(modelName, action, root.name) };
}

function engineFieldName(modelName, action, rootName) {
  // The JSON protocol answers under the GraphQL field name, e.g. `findUniqueUserOrThrow`.
  return modelName === undefined ? action : rootName;
}

/** Typed values in JSON protocol output, turned back into what the GraphQL protocol sends. */
export function untype(value) {
  if (Array.isArray(value)) return value.map(untype);
  if (value === null || typeof value !== 'object') return value;
  if (typeof value.$type === 'string' && 'value' in value && Object.keys(value).length === 2) {
    // DateTime, Decimal, Bytes and Json arrive as strings in both protocols; only
    // BigInt changes, from a string to a number, as the GraphQL protocol sends it.
    return value.$type === 'BigInt' ? new BigIntLiteral(value.value) : value.value;
  }
  const out = {};
  for (const [key, item] of Object.entries(value)) out[key] = untype(item);
  return out;
}

/** Map one JSON protocol answer (`{data: {field: ...}}` or `{errors}`) to the GraphQL shape. */
export function translateResult(answer, { alias, field }) {
  if (answer.errors) return { errors: answer.errors };
  if (!answer.data || !(field in answer.data)) {
    return { errors: [engineError(`the engine answered without ${field}`)] };
  }
  return { data: { [alias]: untype(answer.data[field]) } };
}

/** An error in the shape the client's error mapping reads. */
export function engineError(message, code = null) {
  const error = { error: message, user_facing_error: { is_panic: false, message, meta: {} } };
  if (code) error.user_facing_error.error_code = code;
  return error;
}

// BigIntLiteral values go through JSON.stringify as this marker followed by their digits,
// and the marker is then replaced, quotes and all, by the bare digits. The random part
// keeps a string value from ever looking like one.
const BIGINT_MARKER = `\u0001bigint-${Math.random().toString(36).slice(2)}-${Date.now().toString(36)}:`;
const BIGINT_QUOTED = new RegExp(`"${JSON.stringify(BIGINT_MARKER).slice(1, -1).replace(/\\/g, '\\\\')}(-?\\d+)"`, 'g');
BigIntLiteral.prototype.toJSON = function toJSON() {
  return BIGINT_MARKER + this.text;
};
const BIGINT_ESCAPED = JSON.stringify(BIGINT_MARKER).slice(1, -1);

/**
 * JSON.stringify that writes BigIntLiteral values as bare numbers, keeping every digit.
 * (V8's JSON.stringify is an order of magnitude faster than walking the tree in JS.)
 */
export function stringify(value) {
  if (value instanceof BigIntLiteral) return value.text;
  const text = JSON.stringify(value) ?? 'null';
  return text.includes(BIGINT_ESCAPED) ? text.replace(BIGINT_QUOTED, '$1') : text;
}
