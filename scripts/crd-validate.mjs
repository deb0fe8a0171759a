// Validates custom resources against their CRDs' OpenAPI schemas, as compiled into the
// @kubernetes-models/* npm packages (keda, prometheus-operator, cert-manager).
// Usage: node crd-validate.mjs <node_modules dir>   (stdin: JSON array of objects)
// Prints one line per object; exits 1 if any is invalid or of a kind with no schema here.
import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const PACKAGES = {
  "keda.sh": "@kubernetes-models/keda",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
  "cert-manager.io": "@kubernetes-models/cert-manager",
};

const modules = process.argv[2];
const objects = JSON.parse(readFileSync(0, "utf8"));
let failed = 0;
for (const obj of objects) {
  const [group, version] = String(obj.apiVersion).split("/");
  const name = `${obj.apiVersion} ${obj.kind} ${obj.metadata?.name ?? "?"}`;
  const pkg = PACKAGES[group];
  const file = pkg && join(modules, pkg, group, version ?? "", `${obj.kind}.js`);
  if (!file || !existsSync(file)) {
    console.log(`FAIL ${name}: no CRD schema for this kind`);
    failed++;
    continue;
  }
  const mod = await import(pathToFileURL(file).href);
  const Model = mod[obj.kind];
  try {
    new Model(obj).validate();
    console.log(`ok   ${name} (${pkg} CRD schema)`);
  } catch (e) {
    failed++;
    const details = (e.errors ?? []).map((x) => `\n       ${x.instancePath || "/"} ${x.message} ${JSON.stringify(x.params)}`).join("");
    console.log(`FAIL ${name}: ${e.message}${details}`);
  }
}
process.exit(failed ? 1 : 0);
