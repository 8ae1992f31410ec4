// `prisma generate` downloads the schema engine (a binary from binaries.prisma.sh) before
// generating, unless this configuration gives it a driver adapter for migrations instead.
// Nothing here migrates: the adapter is never opened by `prisma generate`.
const { defineConfig } = require('prisma/config')
const { PrismaPg } = require('@prisma/adapter-pg')

module.exports = defineConfig({
  schema: 'prisma/schema.prisma',
  experimental: { adapter: true },
  engine: 'js',
  adapter: async () => new PrismaPg({ connectionString: process.env.DATABASE_URL }),
})
