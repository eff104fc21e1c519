-- spec/lab_communication_spec.lua: the communication experiment's verdict
-- on synthetic data (the noise rule on both sides of the margin, the
-- grouping of sizes, what decides the cost), its tables and charts.
local H = require "helper"
local lab = require "procthread.lab"
local E = require "procthread.lab.communication"

local SIZES = { 8, 64, 512, 4096, 32768, 262144, 1048576 }
local SMALL = { [8] = true, [64] = true, [512] = true, [4096] = true }

-- The verdict compares medians by their confidence intervals (for three
-- samples: min to max).  `base` has one: 0.9 to 1.1.  slower(m, true) is
-- m x base with its interval just above m x base's (the noise rule says
-- slower); slower(m, false) just below that (within noise).
local BASE = { 0.9, 1.0, 1.1 }
local M = E.MARGIN
local function scaled(t, k) local r = {} for i, x in ipairs(t) do r[i] = x * k end return r end
local function slower(margin, outside)
  local x = margin * 1.1 * (outside and 1.02 or 0.98)
  return { x, x, x }
end

-- Results where series rtt/mech/kind/size has the samples f(mech, kind, size)
-- (times 10 µs); f returning nil leaves the series out.
local function results(f, sizes)
  local r = { params = { sizes = sizes or SIZES }, series = {}, data = {} }
  for _, mech in ipairs({ "channel", "table", "pipe" }) do
    for _, kind in ipairs({ "process", "thread" }) do
      for _, size in ipairs(sizes or SIZES) do
        local xs = f(mech, kind, size)
        if xs then r.series[("rtt/%s/%s/%d"):format(mech, kind, size)] = { samples = scaled(xs, 1e-5), failed = 0, errors = {} } end
      end
    end
  end
  return r
end

local function verdict(f, sizes)
  local v = lab.verdict(E, results(f, sizes))
  return v.verdict, v.condition, v
end

-- The pipe is `pipe(size)` x the others; every kind costs the same.
local function mechanism(pipe)
  return function(mech, _, size)
    if mech == "pipe" then return pipe(size) end
    return BASE
  end
end

local MECH_DECIDES = "processes talk over a pipe: the mechanism decides the cost, not the kind of worker " ..
  "(the same mechanism is not slower between processes than between threads outside the noise)"

describe("lab communication verdict", function()
  H.no_leaks()

  -- base x k, its interval just above (or below) the margin x base's: with a
  -- spread of its own
  local function spread_slower(outside) return scaled(BASE, M * 1.1 / 0.9 * (outside and 1.02 or 0.98)) end

  it("uses a margin of 1.5x", function() assert.are.equal(1.5, M) end)

  it("a pipe slower than a channel by the margin outside the noise, processes as fast as threads: the mechanism decides", function()
    local v, cond = verdict(mechanism(function() return spread_slower(true) end))
    assert.are.equal("conditional", v)
    assert.are.equal(MECH_DECIDES, cond)
    assert.are.equal("holds only if " .. MECH_DECIDES, lab.verdict_text({ verdict = v, condition = cond }))
  end)

  it("a pipe whose spread overlaps the margin is within noise, never slower", function()
    -- intervals so wide (0.7 to 1.3) that processes against threads
    -- overlap at the margin too
    local WIDE = { 0.7, 1.0, 1.3 }
    local function wide(outside)
      return function(mech) return scaled(WIDE, mech == "pipe" and M * 1.3 / 0.7 * (outside and 1.02 or 0.98) or 1) end
    end
    assert.are.equal("conditional", (verdict(wide(true))))
    local v, cond = verdict(wide(false))
    assert.are.equal("within noise", v)
    assert.matches("intervals overlap the margin", cond)
  end)

  it("a pipe no slower than a channel outside the noise, nor processes than threads: contradicted", function()
    local v, cond = verdict(function() return { 1.0, 1.0, 1.0 } end)
    assert.are.equal("contradicted", v)
    assert.are.equal("a pipe is not slower than a channel outside the noise, nor are processes slower than threads", cond)
  end)

  it("processes not slower than threads while the pipe against the channel is within noise: within noise, not contradicted", function()
    local v = verdict(function(mech) return mech == "pipe" and spread_slower(false) or BASE end)
    assert.are.equal("within noise", v)
  end)

  it("processes slower than threads with every mechanism, a pipe as fast as a channel: the kind decides", function()
    local v, cond = verdict(function(_, kind) return kind == "process" and slower(M, true) or BASE end)
    assert.are.equal("conditional", v)
    assert.are.equal("the workers are processes: the kind of worker decides the cost, not the mechanism (a pipe costs what a channel does)", cond)
  end)

  it("both slower: holds, and says that both decide", function()
    local v, cond = verdict(function(mech, kind)
      local k = (kind == "process" and 2 or 1) * (mech == "pipe" and 2 or 1)
      return scaled(BASE, k)
    end)
    assert.are.equal("holds", v)
    assert.are.equal("both decide: a pipe is slower than a channel, and the same mechanism is slower between processes than between threads", cond)
  end)

  it("states a condition per group of sizes, never per size", function()
    local v, cond = verdict(mechanism(function(size) return SMALL[size] and slower(M, true) or { 1.0, 1.0, 1.0 } end))
    assert.are.equal("conditional", v)
    assert.matches("^processes talk over a pipe and messages are up to 4 KiB: the mechanism decides", cond)
    v, cond = verdict(mechanism(function(size) return SMALL[size] and BASE or slower(M, true) end))
    assert.are.equal("conditional", v)
    assert.matches("^processes talk over a pipe and messages are above 4 KiB: the mechanism decides", cond)
  end)

  it("one size that falls into the noise does not change the verdict or the condition", function()
    local _, all = verdict(mechanism(function() return slower(M, true) end))
    for _, flip in ipairs(SIZES) do
      local v, cond = verdict(mechanism(function(size) return slower(M, size ~= flip) end))
      assert.are.equal("conditional", v)
      assert.are.equal(all, cond, "size " .. flip .. " within noise")
    end
    -- half of a group within noise: still slower; more than half: within noise
    local v, cond = verdict(mechanism(function(size) return slower(M, size ~= 8 and size ~= 64) end))
    assert.are.equal(all, cond)
    v, cond = verdict(mechanism(function(size) return slower(M, size > 512) end))
    assert.are.equal("conditional", v)
    assert.matches("^processes talk over a pipe and messages are above 4 KiB:", cond)
    -- one size outside the noise the other way: the group is not slower
    v, cond = verdict(mechanism(function(size) return size == 8 and { 1.0, 1.0, 1.0 } or slower(M, true) end))
    assert.matches("^processes talk over a pipe and messages are above 4 KiB:", cond)
  end)

  it("a group's state: at least half outside the noise and none the other way, on both sides", function()
    assert.are.equal("slower", E.group_state({ "above", "above", "within noise" }))
    assert.are.equal("slower", E.group_state({ "above", "within noise" }))
    assert.are.equal("within noise", E.group_state({ "above", "within noise", "within noise" }))
    assert.are.equal("within noise", E.group_state({ "above", "above", "above", "below" }))
    assert.are.equal("not slower", E.group_state({ "below", "within noise" }))
    assert.are.equal("within noise", E.group_state({ "below", "below", "above" }))
    assert.is_nil(E.group_state({}))
  end)

  it("the same verdict and the same condition whatever the ratios outside the noise (no number in the condition)", function()
    local conds = {}
    for _, k in ipairs({ 2, 3, 40 }) do
      local v, cond = verdict(mechanism(function() return scaled(BASE, k) end))
      assert.are.equal("conditional", v)
      conds[#conds + 1] = cond
    end
    assert.are.equal(conds[1], conds[2])
    assert.are.equal(conds[1], conds[3])
    assert.is_nil(conds[1]:match("%d"))
  end)

  it("decides without the shared-table handoff when it was not measured", function()
    local v, cond = verdict(function(mech, kind, size)
      if mech == "table" then return nil end
      return mechanism(function() return slower(M, true) end)(mech, kind, size)
    end)
    assert.are.equal("conditional", v)
    assert.are.equal(MECH_DECIDES, cond)
  end)

  it("is not measured with no pipe and channel pair", function()
    assert.are.equal("not measured", (verdict(function(mech) return mech == "table" and BASE or nil end)))
    assert.are.equal("not measured", (verdict(function() return BASE end, {})))
  end)

  it("reports the measured figures and the C floors beside the verdict", function()
    local r = results(mechanism(function() return scaled(BASE, 5) end))
    for _, size in ipairs(SIZES) do
      for _, f in ipairs({ "shm", "pipe" }) do
        for _, kind in ipairs({ "process", "thread" }) do
          r.series[("floor/%s/%s/%d"):format(f, kind, size)] = { samples = { 2e-6, 2e-6 }, failed = 0, errors = {} }
        end
      end
    end
    local v = lab.verdict(E, r)
    assert.matches("^pipe 50 µs %(8 B%) – 50 µs %(1 MiB%), C floor 2 µs – 2 µs", v.process)
    assert.matches("^channel 10 µs %(8 B%)", v.thread)
    assert.matches("a channel between threads took 5–5× the memcpy %+ futex floor", v.reading)
    assert.matches("Mechanism %(a pipe against a channel, the same kind of worker%): messages up to 4 KiB: slower; messages above 4 KiB: slower", v.reading)
    local tables = E.table(r)
    assert.are.equal(5, #tables)
    assert.are.equal("C: memcpy + futex, processes", tables[3].header[2])
    assert.are.equal("2 µs", tables[3].rows[1][2])
    assert.are.equal("pipe / channel, processes", tables[2].header[2])
    assert.are.equal("5.00×, slower", tables[2].rows[1][2])
    assert.are.equal("1.00×, not slower", tables[2].rows[1][4])
    local charts = E.charts(r)
    assert.are.equal(10, #charts[1].series)        -- 6 mechanisms x kinds, 4 floors
  end)
end)

describe("lab communication run", function()
  H.no_leaks()

  it("measures channels, pt.wait handoffs, pipes and the C floors, and never sleeps to wait", function()
    local real = require "procthread"
    local fake = setmetatable({ sleep = function() error("the parent slept to wait", 2) end }, { __index = real })
    local res = lab.run_experiment(E, { mode = "tiny", progress = false, pt = fake })
    assert.is_nil(res.error)
    for _, mech in ipairs({ "rtt/channel", "rtt/table", "rtt/pipe", "tput/table", "floor/shm", "floor/pipe" }) do
      for _, kind in ipairs({ "process", "thread" }) do
        for _, size in ipairs(res.params.sizes) do
          local key = ("%s/%s/%d"):format(mech, kind, size)
          local s = res.series[key]
          assert.is_table(s, key)
          assert.are.equal(0, s.failed, key .. ": " .. tostring(s.errors[1] and s.errors[1].message))
          assert.is_true(#s.samples > 0, key)
        end
      end
    end
  end)
end)
