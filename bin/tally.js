#!/usr/bin/env node
// The `tally` command. npm scripts and npx run it with the Node 24 that `npm install`
// brings (node_modules/.bin/node), which runs the TypeScript sources directly.
import "../src/cli/main.ts"
