// npm run test:asan: builds the addon with ASan + UBSan and runs the native
// and fuzz tests against it (test/helpers/asan.ts). Exits non-zero when a
// test fails or a sanitizer reports anything.
import { ASAN_SUITES, buildAsanAddon, REPORT, runUnderAsan } from "./helpers/asan.js";

console.log(`building ${buildAsanAddon()}`);
const { status, output } = await runUnderAsan(ASAN_SUITES, true);
const report = REPORT.test(output);
if (report) console.error("test:asan: a sanitizer reported an error (see above)");
process.exit(status !== 0 ? status : report ? 1 : 0);
