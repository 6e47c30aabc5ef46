// Validates KEDA objects (JSON, one per file, as scripts/test.sh splits them
// out of the rendered chart) against the KEDA CRD schemas that
// @kubernetes-models/keda is generated from. Exits non-zero on the first
// object that does not validate, naming the file and the schema's complaint.
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject";

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: node validate.mjs OBJECT.json...");
  process.exit(2);
}
for (const file of files) {
  const obj = JSON.parse(readFileSync(file, "utf8"));
  if (obj.apiVersion !== "keda.sh/v1alpha1" || obj.kind !== "ScaledObject") {
    console.error(`${file}: ${obj.apiVersion}/${obj.kind} is not a keda.sh/v1alpha1 ScaledObject`);
    process.exit(1);
  }
  try {
    new ScaledObject(obj).validate();
  } catch (e) {
    console.error(`${file}: not a valid ScaledObject: ${e.message}`);
    process.exit(1);
  }
  console.log(`${file}: valid keda.sh/v1alpha1 ScaledObject ${obj.metadata.name}`);
}
