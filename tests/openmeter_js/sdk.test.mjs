// OpenMeter's JavaScript SDK against a real meterline server (METERLINE_URL, METERLINE_KEY),
// started by tests/test_openmeter_js_sdk.py. Every number is checked against the events sent.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { OpenMeter } from '@openmeter/sdk'
import { OpenMeter as Portal } from '@openmeter/sdk/portal'

const baseUrl = process.env.METERLINE_URL
const om = new OpenMeter({ baseUrl, apiKey: process.env.METERLINE_KEY })
const MINUTE = 60_000
const now = Date.now()
const start = now - 2 * 60 * MINUTE
const anchor = new Date(Math.floor((now - 3 * 60 * MINUTE) / MINUTE) * MINUTE)
const events = Array.from({ length: 40 }, (_, i) => ({
  id: `js-${i}`,
  source: 'js-test',
  type: 'prompt',
  subject: i % 3 === 0 ? 'globex' : 'acme',
  time: new Date(start + i * 157_123),
  data: { tokens: i + 1, model: i % 2 ? 'a' : 'b', region: i % 4 ? 'eu' : 'us' },
}))

const sum = (xs) => xs.reduce((a, b) => a + b, 0)
const tokens = (pick) => sum(events.filter(pick).map((e) => e.data.tokens))
const within = (from, to) => (e) => e.time >= from && e.time < to

async function rejects(promise, status, code) {
  await assert.rejects(promise, (err) => {
    assert.equal(err.status, status, err.message)
    if (code) assert.equal(err.getField('code'), code)
    return true
  })
}

test('OpenMeter JavaScript SDK against meterline', async (t) => {
  await t.test('meters', async () => {
    const created = await om.meters.create({
      slug: 'tokens', name: 'Tokens', eventType: 'prompt', aggregation: 'SUM',
      valueProperty: '$.tokens', groupBy: { model: '$.model' },
    })
    assert.equal(created.slug, 'tokens')
    assert.equal((await om.meters.get('tokens')).aggregation, 'SUM')
    assert.deepEqual((await om.meters.list()).map((m) => m.slug), ['tokens'])
    const updated = await om.meters.update('tokens', { name: 'Tokens total', description: 'AI', groupBy: { model: '$.model' } })
    assert.equal(updated.name, 'Tokens total')
    assert.equal(updated.aggregation, 'SUM')
    // members not set are absent, as OpenMeter answers them (its schema has no null there)
    const count = await om.meters.create({ slug: 'calls', eventType: 'call', aggregation: 'COUNT' })
    assert.ok(!('description' in count) && !('valueProperty' in count), JSON.stringify(count))
    assert.deepEqual((await om.meters.list({ orderBy: 'createdAt', order: 'DESC' })).map((m) => m.slug), ['calls', 'tokens'])
    await om.meters.delete('calls')
    assert.deepEqual((await om.meters.list()).map((m) => m.slug), ['tokens'])
  })

  await t.test('ingest: batch, and a single event with the SDK defaults', async () => {
    await om.events.ingest(events)
    await om.events.ingest({ type: 'prompt', subject: 'initech', data: { tokens: 7, model: 'a' } })
    await om.events.ingest(events.slice(0, 3)) // retries are not counted twice
  })

  await t.test('meter queries with Date ranges (seconds and milliseconds)', async () => {
    const from = new Date(start + 10 * 157_123 + 17)
    const to = new Date(start + 30 * 157_123 + 5)
    const all = await om.meters.query('tokens', { from, to })
    assert.equal(all.data.length, 1)
    assert.equal(all.data[0].value, tokens(within(from, to)))
    assert.equal(all.data[0].windowStart.getTime(), from.getTime())
    assert.equal(all.data[0].windowEnd.getTime(), to.getTime())

    const grouped = await om.meters.query('tokens', { from, to, groupBy: ['model'], subject: ['acme'] })
    for (const model of ['a', 'b']) {
      const row = grouped.data.find((r) => r.groupBy.model === model)
      assert.equal(row.subject, 'acme')
      assert.equal(row.value, tokens((e) => within(from, to)(e) && e.subject === 'acme' && e.data.model === model))
    }
    const filtered = await om.meters.query('tokens', { from, to, filterGroupBy: { model: 'a' } })
    assert.equal(filtered.data[0].value, tokens((e) => within(from, to)(e) && e.data.model === 'a'))

    const hourly = await om.meters.query('tokens', {
      from, to, windowSize: 'HOUR', windowTimeZone: 'Asia/Kathmandu',
    })
    assert.equal(sum(hourly.data.map((r) => r.value)), tokens(within(from, to)))
    for (const row of hourly.data.slice(1)) assert.equal(row.windowStart.getUTCMinutes(), 15) // +05:45
    const minutes = await om.meters.query('tokens', { from, to, windowSize: 'MINUTE' })
    assert.equal(sum(minutes.data.map((r) => r.value)), tokens(within(from, to)))

    const everything = await om.meters.query('tokens', { from: new Date(start - MINUTE), to: new Date(now + MINUTE) })
    assert.equal(everything.data[0].value, tokens(() => true) + 7)
    const posted = await om.meters.queryPost('tokens', { from, to, subject: ['globex'] })
    assert.equal(posted.data[0].value, tokens((e) => within(from, to)(e) && e.subject === 'globex'))
  })

  await t.test('a groupBy change counts the earlier events by the new key', async () => {
    const groupBy = { model: '$.model', region: '$.region' }
    const regrouped = await om.meters.update('tokens', { name: 'Tokens total', description: 'AI', groupBy })
    assert.deepEqual(regrouped.groupBy, groupBy)
    const byRegion = await om.meters.query('tokens', {
      from: new Date(start - MINUTE), to: new Date(now + MINUTE), groupBy: ['region'],
    })
    for (const region of ['eu', 'us']) {
      const row = byRegion.data.find((r) => r.groupBy.region === region)
      assert.equal(row.value, tokens((e) => e.data.region === region))
    }
  })

  await t.test('events list, v1 and v2', async () => {
    const listed = await om.events.list({ from: new Date(start - MINUTE), limit: 100 })
    assert.equal(listed.length, 41)
    assert.ok(listed.some((e) => e.event.source === '@openmeter/sdk' && e.event.subject === 'initech'))
    const globex = events.filter((e) => e.subject === 'globex').map((e) => e.id).reverse()
    const ids = []
    let cursor
    do {
      const page = await om.events.listV2({ limit: 5, cursor, filter: JSON.stringify({ subject: { $eq: 'globex' } }) })
      ids.push(...page.items.map((item) => item.event.id))
      cursor = page.nextCursor
    } while (cursor)
    assert.deepEqual(ids, globex)
  })

  await t.test('customers: create, get, list, update with OpenMeter fields', async () => {
    const acme = await om.customers.create({
      name: 'ACME, Inc.', key: 'acme', usageAttribution: { subjectKeys: ['acme'] },
      primaryEmail: 'billing@acme.example', currency: 'USD', description: 'first',
      billingAddress: { country: 'US', city: 'Springfield' },
    })
    assert.equal(acme.key, 'acme')
    assert.deepEqual(acme.usageAttribution, { subjectKeys: ['acme'] })
    const fetched = await om.customers.get(acme.id)
    assert.equal(fetched.primaryEmail, 'billing@acme.example')
    assert.equal(fetched.createdAt instanceof Date, true)
    const noKey = await om.customers.create({ name: 'Initech', usageAttribution: { subjectKeys: ['initech'] } })
    assert.ok(noKey.key)
    const page = await om.customers.list({ page: 1, pageSize: 1 })
    assert.equal(page.totalCount, 2)
    assert.equal(page.items.length, 1)
    assert.equal((await om.customers.list({ primaryEmail: 'acme.example' })).items[0].key, 'acme')
    const updated = await om.customers.update('acme', {
      name: 'ACME', usageAttribution: { subjectKeys: ['acme'] }, primaryEmail: 'ap@acme.example', currency: 'EUR',
    })
    assert.equal(updated.name, 'ACME')
    assert.equal(updated.currency, 'EUR')
    // a customer's usage: filterCustomerId answers its rows, each naming it in customerId
    const [from, to] = [new Date(start - MINUTE), new Date(now + MINUTE)]
    const scoped = await om.meters.query('tokens', { from, to, filterCustomerId: [acme.id] })
    assert.deepEqual(scoped.data.map((r) => [r.customerId, r.value]), [[acme.id, tokens((e) => e.subject === 'acme')]])
  })

  await t.test('features', async () => {
    const feature = await om.features.create({ key: 'tokens', name: 'Tokens', meterSlug: 'tokens' })
    assert.equal((await om.features.get(feature.id)).key, 'tokens')
    const sso = await om.features.create({ key: 'sso', name: 'SSO' })
    assert.ok(['meterSlug', 'meterGroupByFilters', 'metadata', 'archivedAt'].every((k) => !(k in sso)), JSON.stringify(sso))
    assert.deepEqual((await om.features.list()).map((f) => f.key).sort(), ['sso', 'tokens'])
    await rejects(om.meters.delete('tokens'), 409, 'meter_in_use')
    // OpenMeter's members meterline does not support are refused by name, never dropped
    for (const extra of [{ unitCost: { type: 'manual', amount: '0.01' } }, { advancedMeterGroupByFilters: { model: { $eq: 'a' } } }]) {
      await assert.rejects(om.features.create({ key: 'cost', name: 'Cost', meterSlug: 'tokens', ...extra }), (err) => {
        assert.equal(err.status, 400)
        assert.match(err.getField('detail'), new RegExp(`${Object.keys(extra)[0]} is not supported`))
        return true
      })
    }
    await rejects(om.features.get('cost'), 404, 'feature_not_found')
  })

  await t.test('entitlements through the v2 customer paths', async () => {
    const ent = await om.customers.entitlements.create('acme', {
      type: 'metered', featureKey: 'tokens', usagePeriod: { interval: 'MONTH', anchor }, issue: { amount: 1000 },
      measureUsageFrom: 'CURRENT_PERIOD_START', // the events since the anchor count (OpenMeter's default: from now)
    })
    const acme = await om.customers.get('acme')
    assert.equal(ent.customerId, acme.id)
    const usage = tokens((e) => e.subject === 'acme')
    const value = await om.customers.entitlements.value('acme', 'tokens')
    assert.equal(value.hasAccess, true)
    assert.equal(value.usage, usage)
    assert.equal(value.balance, 1000 - usage)
    await om.customers.entitlements.createGrant('acme', 'tokens', { amount: 50, effectiveAt: anchor })
    assert.equal((await om.customers.entitlements.value('acme', ent.id)).balance, 1050 - usage)
    const grants = await om.customers.entitlements.listGrants('acme', 'tokens')
    // the default grant of `issue` is listed beside the one created, as OpenMeter lists it
    assert.deepEqual(grants.items.map((g) => [g.amount, Boolean(g.annotations?.issueAfterReset)]).sort(),
      [[1000, true], [50, false]].sort())
    // v2 shows no expiration for a grant that never expires (absent, not null)
    const issued = grants.items.find((g) => g.annotations?.issueAfterReset)
    assert.ok(!('expiration' in issued) && !('expiresAt' in issued) && !('voidedAt' in issued), JSON.stringify(issued))
    assert.equal((await om.customers.entitlements.list('acme')).items[0].id, ent.id)
    assert.equal((await om.entitlements.get(ent.id)).customerKey, 'acme')
    assert.equal((await om.entitlements.list()).totalCount, 1)
    assert.equal((await om.customers.entitlementsV1.value('acme', 'tokens')).usage, usage)
    // history over a range cut inside minutes (milliseconds), as exact as the meter query
    const from = new Date(start + 3 * 157_123 + 17)
    const to = new Date(start + 29 * 157_123 + 999)
    const history = await om.customers.entitlements.history('acme', 'tokens', 'HOUR', { query: { from, to } })
    const windowed = history.windowedHistory.reduce((sum, w) => sum + w.usage, 0)
    assert.equal(windowed, tokens((e) => within(from, to)(e) && e.subject === 'acme'))
    // windows lie within the range: the first starts at `from` exactly, not at its hour
    assert.ok(history.windowedHistory.every((w) => new Date(w.period.from) >= from && new Date(w.period.to) <= to))
    // events carry the customer their subject belongs to
    const page = await om.events.listV2({ limit: 100, filter: JSON.stringify({ subject: { $eq: 'acme' } }) })
    assert.ok(page.items.length > 0 && page.items.every((item) => item.customerId === acme.id))
  })

  await t.test('entitlements through the v1 subject paths', async () => {
    const boolean = { type: 'boolean', featureKey: 'sso' }
    await rejects(om.entitlementsV1.create('globex', boolean), 404, 'subject_not_found') // only seen in events
    await om.subjects.upsert([{ key: 'globex', displayName: 'Globex' }])
    assert.equal((await om.subjects.get('globex')).displayName, 'Globex')
    assert.ok((await om.subjects.list()).some((s) => s.key === 'globex'))
    await om.entitlementsV1.create('globex', boolean)
    assert.equal((await om.entitlementsV1.value('globex', 'sso')).hasAccess, true)
    const metered = await om.entitlementsV1.create('globex', {
      type: 'metered', featureKey: 'tokens', usagePeriod: { interval: 'MONTH', anchor }, issueAfterReset: 10,
      measureUsageFrom: 'CURRENT_PERIOD_START',
    })
    const usage = tokens((e) => e.subject === 'globex')
    await om.entitlementsV1.grants.create('globex', metered.id, {
      amount: 5, effectiveAt: anchor, expiration: { duration: 'YEAR', count: 1 },
    })
    const value = await om.entitlementsV1.value('globex', 'tokens')
    assert.equal(value.usage, usage)
    assert.equal(value.balance, Math.max(0, 15 - usage))
    assert.equal(value.hasAccess, usage < 15)
    // the grant issueAfterReset stands for: a ULID, and in v1's shape a never-expiring grant
    // expires in 100 years (v1 requires an expiration)
    const listed = await om.entitlementsV1.grants.list('globex', metered.id)
    const issued = listed.find((g) => g.annotations?.issueAfterReset)
    assert.match(issued.id, /^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$/)
    assert.deepEqual([issued.amount, issued.expiration], [10, { duration: 'YEAR', count: 100 }])
    assert.equal(new Date(issued.expiresAt).getUTCFullYear(), new Date(issued.effectiveAt).getUTCFullYear() + 100)
    const history = await om.entitlementsV1.history('globex', metered.id, { windowSize: 'DAY' })
    assert.ok(history.burndownHistory.some((s) => s.grantUsages.some((u) => u.grantId === issued.id)))
    // the grants list filters by subject and feature
    const all = await om.entitlementsV1.grants.listAll({ subject: ['globex'], feature: ['tokens'] })
    assert.deepEqual(all.map((g) => g.id).sort(), listed.map((g) => g.id).sort())
    assert.deepEqual(await om.entitlementsV1.grants.listAll({ subject: ['nobody'] }), [])
    await om.entitlementsV1.grants.void(issued.id) // voided by that id, like any grant
    assert.ok(!(await om.entitlementsV1.grants.list('globex', metered.id)).some((g) => g.id === issued.id))
    const voided = await om.entitlementsV1.grants.list('globex', metered.id, { includeDeleted: true })
    assert.ok(voided.find((g) => g.id === issued.id).voidedAt)
  })

  await t.test('notification channels', async () => {
    const channel = await om.notifications.channels.create({ type: 'WEBHOOK', name: 'ops', url: 'http://127.0.0.1:9/hook' })
    assert.equal((await om.notifications.channels.get(channel.id)).name, 'ops')
    assert.equal((await om.notifications.channels.list()).items.length, 1)
    const second = await om.notifications.channels.create({ type: 'WEBHOOK', name: 'billing', url: 'http://127.0.0.1:9/b' })
    const byId = [channel.id, second.id].sort()
    assert.deepEqual((await om.notifications.channels.list({ orderBy: 'id', order: 'DESC' })).items.map((c) => c.id), byId.reverse())
    await rejects(om.notifications.channels.list({ orderBy: 'name' }), 400, 'invalid_query')
    await om.notifications.channels.delete(second.id)
    const rule = await om.notifications.rules.create({
      type: 'entitlements.balance.threshold', name: 'usage', channels: [channel.id], features: ['tokens'],
      thresholds: [{ type: 'PERCENT', value: 80 }],
    })
    assert.deepEqual(rule.channels.map((c) => c.id), [channel.id])
    assert.deepEqual((await om.notifications.rules.list({ feature: ['tokens'] })).items.map((r) => r.id), [rule.id])
    // OpenMeter's rule types that meterline does not build: a clear 501 naming the type
    for (const type of ['entitlements.reset', 'invoice.created']) {
      await rejects(om.notifications.rules.create({ type, name: 'other', channels: [channel.id] }), 501, 'not_supported')
    }
    // a rule for every feature has no `features` (OpenMeter's has at least one when present), nothing null
    const every = await om.notifications.rules.create({
      type: 'entitlements.balance.threshold', name: 'every', channels: [channel.id], thresholds: [{ type: 'NUMBER', value: 5 }],
    })
    assert.ok(!('features' in every) && Object.values(every).every((v) => v !== null), JSON.stringify(every))
    assert.ok(!('customHeaders' in channel), JSON.stringify(channel))
    await om.notifications.rules.delete(every.id)
    await om.notifications.rules.delete(rule.id)
    assert.equal((await om.notifications.rules.list()).totalCount, 0)
  })

  await t.test('portal tokens and the portal SDK query', async () => {
    const token = await om.portal.create({ subject: 'acme', allowedMeterSlugs: ['tokens'] })
    const every = await om.portal.create({ subject: 'acme' }) // every meter: allowedMeterSlugs absent
    assert.ok(!('allowedMeterSlugs' in every), JSON.stringify(every))
    assert.deepEqual((await om.portal.list()).map((t) => t.id).sort(), [token.id, every.id].sort())
    await om.portal.invalidate({ id: every.id })
    assert.deepEqual((await om.portal.list()).map((t) => t.id), [token.id])
    const portal = new Portal({ baseUrl, portalToken: token.token })
    const from = new Date(start + 5 * 157_123 + 250)
    const to = new Date(start + 35 * 157_123 + 750)
    const answer = await portal.query('tokens', { from, to })
    assert.equal(answer.data[0].value, tokens((e) => within(from, to)(e) && e.subject === 'acme'))
  })

  await t.test('OpenMeter calls meterline does not serve answer a problem, not a 404', async () => {
    await rejects(om.addons.list(), 501, 'not_supported')
    await rejects(om.apps.list(), 501, 'not_supported')
    // OpenMeter's product catalog and billing: meterline's own billing lives elsewhere
    await rejects(om.plans.list(), 501, 'not_supported')
    await rejects(om.subscriptions.get('01J0000000000000000000000A'), 501, 'not_supported')
    await rejects(om.billing.invoices.list(), 501, 'not_supported')
  })
})
