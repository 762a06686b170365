#!/usr/bin/env node
// Fails when the project's modules (src/, and the tests, commands and benches) import each other
// in a cycle. A cycle means two modules
// cannot be understood, tested or loaded one without the other (and at run time, one of them
// sees the other half-initialised). Type-only imports count too: they tie the designs together
// just the same.
//
// Reads the import graph with the TypeScript compiler already installed for the type check, so
// it needs nothing from the network and no other tool. Usage: node scripts/check-import-cycles.mjs [root...]
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

const repo = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const roots =
  process.argv.length > 2 ? process.argv.slice(2).map((r) => path.resolve(r)) : ['src', 'test', 'commands', 'bench'].map((dir) => path.join(repo, dir));

function sourceFiles(dir) {
  const out = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sourceFiles(full));
    else if (/\.(ts|mts|cts)$/.test(entry.name) && !entry.name.endsWith('.d.ts')) out.push(full);
  }
  return out;
}

/** Relative module specifiers of a file: static imports and re-exports, dynamic `import()`. */
function specifiers(file) {
  const text = readFileSync(file, 'utf8');
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, false, ts.ScriptKind.TS);
  const found = [];
  const visit = (node) => {
    if ((ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) && node.moduleSpecifier && ts.isStringLiteral(node.moduleSpecifier)) {
      found.push(node.moduleSpecifier.text);
    } else if (ts.isCallExpression(node) && node.expression.kind === ts.SyntaxKind.ImportKeyword) {
      const [arg] = node.arguments;
      if (arg && ts.isStringLiteral(arg)) found.push(arg.text);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found.filter((s) => s.startsWith('.'));
}

const files = roots.flatMap(sourceFiles);
const known = new Set(files);
const graph = new Map();
for (const file of files) {
  const targets = specifiers(file)
    .map((s) => path.resolve(path.dirname(file), s))
    .filter((target) => known.has(target));
  graph.set(file, [...new Set(targets)].sort());
}

// Tarjan's strongly connected components: every component of more than one module (or a module
// importing itself) is a cycle.
let index = 0;
const indexOf = new Map();
const low = new Map();
const stack = [];
const onStack = new Set();
const cycles = [];
function connect(v) {
  indexOf.set(v, index);
  low.set(v, index);
  index++;
  stack.push(v);
  onStack.add(v);
  for (const w of graph.get(v)) {
    if (!indexOf.has(w)) {
      connect(w);
      low.set(v, Math.min(low.get(v), low.get(w)));
    } else if (onStack.has(w)) {
      low.set(v, Math.min(low.get(v), indexOf.get(w)));
    }
  }
  if (low.get(v) === indexOf.get(v)) {
    const component = [];
    let w;
    do {
      w = stack.pop();
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || graph.get(v).includes(v)) cycles.push(component);
  }
}
for (const file of files) if (!indexOf.has(file)) connect(file);

/** One concrete loop through a component, for the message: a → b → … → a. */
function loopThrough(component) {
  const members = new Set(component);
  const start = [...component].sort()[0];
  const previous = new Map([[start, null]]);
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift();
    for (const w of graph.get(v)) {
      if (w === start) {
        const loop = [start];
        for (let at = v; at !== start; at = previous.get(at)) loop.splice(1, 0, at);
        return [...loop, start];
      }
      if (members.has(w) && !previous.has(w)) {
        previous.set(w, v);
        queue.push(w);
      }
    }
  }
  return [start, start];
}

const rel = (file) => path.relative(repo, file);
if (cycles.length > 0) {
  console.error(`import cycles: ${cycles.length}`);
  for (const component of cycles) console.error(`  ${loopThrough(component).map(rel).join(' → ')}`);
  process.exit(1);
}
console.log(`import cycles: none (${files.length} modules)`);
