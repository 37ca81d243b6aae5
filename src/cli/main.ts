/** The `tally` command line. */
console.log("Tally: the storage engine is built (engine/, docs/storage.md); the node and the cluster come next.")
console.log("Try: npm test, npm run bench:engine")
