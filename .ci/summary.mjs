// Prints the plain closing line CI reads ("N passed, N failed, N skipped") from vitest's JSON
// results, and fails when the run failed or ran no test.
import { readFileSync } from 'node:fs';

const file = process.argv[2] ?? '.tmp/test-results.json';
let results;
try {
  results = JSON.parse(readFileSync(file, 'utf8'));
} catch (err) {
  console.error(`ci: no test results at ${file}: ${err.message}`);
  process.exit(1);
}
const passed = results.numPassedTests ?? 0;
const failed = (results.numFailedTests ?? 0) + (results.numRuntimeErrorTestSuites ?? 0);
const skipped = (results.numPendingTests ?? 0) + (results.numTodoTests ?? 0);
console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
if (failed > 0 || passed === 0 || results.success === false) process.exit(1);
