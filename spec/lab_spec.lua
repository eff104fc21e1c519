-- spec/lab_spec.lua: the lab's harness, statistics, JSON, charts, report,
-- command line, the verdict rules on synthetic data, and every built-in
-- experiment in its tiny mode.
local H = require "helper"
local lab = require "procthread.lab"
local json = require "procthread.lab.json"
local stats = require "procthread.lab.stats"
local svg = require "procthread.lab.svg"
local format = require "procthread.lab.format"
local report = require "procthread.lab.report"

-- once, at load: H.interpreter() leaves an io.popen handle to the
-- garbage collector, which would close it during some later test
local LUA = H.interpreter()
collectgarbage(); collectgarbage()

local function spec_dir()
  local src = debug.getinfo(1, "S").source:gsub("^@", "")
  return src:match("^(.*)/[^/]*$") or "."
end
local SPEC = spec_dir()
local ROOT = SPEC:match("^(.*)/spec$") or (SPEC == "spec" and ".") or (SPEC .. "/..")

local function read(path)
  local f = io.open(path, "rb"); if not f then return nil end
  local s = f:read("*a"); f:close(); return s
end

local tmpdir, rmdir, q = H.tmpdir, H.rmdir, H.shell_quote

-- Run bin/procthread-lab with this Lua and this package path.
local function cli(args)
  return H.sh(("PROCTHREAD_LUA=%s PROCTHREAD_BUILD_DIR=/nonexistent LUA_PATH=%s LUA_CPATH=%s timeout 120 %s/bin/procthread-lab %s")
    :format(q(LUA), q(package.path), q(package.cpath), ROOT, args))
end

-- A results table for one experiment from series of samples.
local function results(params, series, data)
  local r = { params = params, series = {}, data = data or {} }
  for k, samples in pairs(series) do
    r.series[k] = { samples = samples, failed = 0, errors = {} }
  end
  return r
end

local function verdict_of(name, res)
  local exp = assert(lab.load(name))
  local v = lab.verdict(exp, res)
  return v.verdict, v.condition or "", v
end

describe("lab modules", function()
  H.no_leaks()

  -- issue 10: experiments use the helpers, the harness uses both, and
  -- nothing below the harness loads it back
  it("load no harness: every helper and built-in experiment loads without procthread.lab", function()
    local status, out = H.fresh([[
      package.preload["procthread.lab"] = function() error("the harness was loaded", 2) end
      for _, m in ipairs({ "util", "format", "stats", "json", "svg", "claims", "memory", "communication",
                           "isolation", "creation", "failure", "cpu", "backend" }) do
        require("procthread.lab." .. m)
      end
      print("loaded")
    ]])
    assert.are.equal(0, status, out)
    assert.matches("loaded", out, 1, true)
  end)

  it("write each claim once: the experiments take theirs from procthread.lab.claims", function()
    local claims = require "procthread.lab.claims"
    for _, name in ipairs(claims.order) do
      local exp = assert(lab.load(name))
      assert.are.equal(claims.by_name[name], exp.claim, name)
      assert.are.equal(claims.by_name[name].aspect, exp.aspect, name)
    end
  end)
end)

describe("lab json", function()
  H.no_leaks()

  it("round-trips nested values, sorting keys", function()
    local v = { b = { 1, 2.5, -3e-7, "x\n\"y\"\1" }, a = true, c = { d = false, e = {} }, n = 1e300 }
    local s = json.encode(v)
    assert.are.equal('{"a":true,"b":[1,2.5,-3e-07,"x\\n\\"y\\"\\u0001"],"c":{"d":false,"e":[]},"n":1e+300}', s)
    assert.are.same(v, json.decode(s))
    assert.are.same(v, json.decode(json.encode(v, "  ")))
  end)

  it("writes NaN and infinities as null and decodes unicode escapes", function()
    assert.are.equal("[null,null,null]", json.encode({ 0 / 0, math.huge, -math.huge }))
    assert.are.equal("é€😀", json.decode('"\\u00e9\\u20ac\\ud83d\\ude00"'))
  end)

  it("rejects bad input with the byte where it went wrong", function()
    local v, err = json.decode('{"a": [1, 2,, 3]}')
    assert.is_nil(v)
    assert.matches("column 13", err)
    assert.is_nil((json.decode('{"a": 1} x')))
    assert.is_nil((json.decode('"unterminated')))
    assert.has_error(function() json.encode({ f = print }) end)
  end)
end)

describe("lab stats", function()
  H.no_leaks()

  it("gives median, quantiles and spread", function()
    local s = stats.summary({ 5, 1, 4, 2, 3 }, 2)
    assert.are.equal(3, s.median)
    assert.are.equal(1, s.min); assert.are.equal(5, s.max)
    assert.are.equal(1.4, s.p10); assert.are.equal(4.6, s.p90)
    assert.are.equal(2, s.failed); assert.are.equal(5, s.n)
    assert.are.equal(2.5, stats.median({ 4, 1, 2, 3 }))
    assert.is_nil(stats.summary({}).median)
    assert.are.equal(50, stats.cross(0, 1, 100, 2, 1.5))
  end)

  it("gives the median's 95 % confidence interval by order statistics", function()
    local xs = {}
    for i = 32, 1, -1 do xs[#xs + 1] = i end
    local s = stats.summary(xs)
    assert.are.equal(10, s.ci_lo); assert.are.equal(23, s.ci_hi)     -- the binomial table's ranks for n = 32
    s = stats.summary({ 3, 1, 2 })
    assert.are.equal(1, s.ci_lo); assert.are.equal(3, s.ci_hi)       -- a handful: all of it
    assert.is_nil(stats.summary({}).ci_lo)
  end)

  it("applies the noise rule to medians by their confidence intervals, on both sides of the margin", function()
    -- two modes: p10 - p90 overlap whatever the medians, the intervals do not
    local fast, slow = {}, {}
    for i = 1, 32 do
      fast[i] = (i % 5 == 0) and 50 or 1 + i / 100
      slow[i] = (i % 5 == 0) and 50 or 6 + i / 100
    end
    local f, s = stats.summary(fast), stats.summary(slow)
    assert.are.equal("within noise", stats.versus(s, f, 1.5))
    assert.are.equal("above", stats.versus_median(s, f, 1.5))
    assert.are.equal("below", stats.versus_median(f, s, 1.5))
    local near = stats.summary({ 1.5 * f.ci_hi * 0.99, 1.5 * f.ci_hi * 1.5, 1.5 * f.ci_hi * 1.6 })
    assert.are.equal("within noise", stats.versus_median(near, f, 1.5))
    near = stats.summary({ 1.5 * f.ci_hi * 1.01, 1.5 * f.ci_hi * 1.5, 1.5 * f.ci_hi * 1.6 })
    assert.are.equal("above", stats.versus_median(near, f, 1.5))
    assert.is_nil(stats.versus_median(stats.summary({}), f, 1.5))
  end)
end)

describe("lab svg", function()
  H.no_leaks()

  it("formats values with units", function()
    assert.are.equal("1.5 ms", format.value(0.0015, "s"))
    assert.are.equal("250 µs", format.value(0.00025, "s"))
    assert.are.equal("1 MiB", format.value(1048576, "B"))
    assert.are.equal("2 GiB/s", format.value(2 * 2 ^ 30, "B/s"))
    assert.are.equal("3.2 M/s", format.value(3.2e6, "/s"))
  end)

  it("draws a well-formed chart with axes, legend and escaped text", function()
    local s = svg.chart({ title = "a < b & c", x = { label = "size", unit = "B", log = true },
      y = { label = "latency", unit = "s", log = true },
      series = { { name = "pipe", points = { { x = 8, y = 1e-5, lo = 9e-6, hi = 2e-5 }, { x = 1048576, y = 1e-3 } } },
                 { name = "table", points = { { x = 8, y = 2e-6 }, { x = 1048576, y = 0 } } } } })
    assert.matches("^<svg", s)
    assert.matches("</svg>\n$", s)
    assert.matches("a &lt; b &amp; c", s, 1, true)
    assert.matches(">pipe<", s, 1, true)
    assert.matches(">1 MiB<", s, 1, true)
    assert.matches("(log scale)", s, 1, true)
    -- every opened element is closed
    local open = 0
    for tag, close in s:gmatch("<(/?)%a+[^>]-(/?)>") do
      if tag == "/" then open = open - 1 elseif close ~= "/" then open = open + 1 end
    end
    assert.are.equal(0, open)
  end)

  local function texts(s)
    local t = {}
    for x in s:gmatch('<text [^>]*text%-anchor="middle">([^<]*)</text>') do t[#t + 1] = x end
    return table.concat(t, "|")
  end

  it("ticks the x axis at the measured sizes, not at powers of 8", function()
    local pts = {}
    for _, size in ipairs({ 8, 64, 512, 4096, 32768, 262144, 1048576 }) do pts[#pts + 1] = { x = size, y = 1e-5 } end
    local s = svg.chart({ title = "t", x = { unit = "B", log = true }, y = { unit = "s", log = true },
                          series = { { name = "a", points = pts } } })
    assert.matches("8 B|64 B|512 B|4 KiB|32 KiB|256 KiB|1 MiB", texts(s), 1, true)
  end)

  -- found by attack: an infinite value on a log axis made the tick loop run
  -- for ever (a chart of a measurement that came out inf); run under
  -- timeout(1) so that a hang fails the case
  it("places no infinite or NaN value on an axis, log or linear", function()
    local status, out = H.fresh_under("timeout 20", [[
      local svg = require "procthread.lab.svg"
      for _, bad in ipairs({ math.huge, -math.huge, 0/0 }) do
        for _, log in ipairs({ true, false }) do
          local s = svg.chart({ title = "t", x = { unit = "B", log = log }, y = { unit = "/s", log = log },
            series = { { name = "a", points = { { x = 1, y = 1 }, { x = 2, y = bad }, { x = bad, y = 3 },
                                                { x = 4, y = 5 } } } } })
          assert(not s:find("inf") and not s:find("nan"), s)
        end
      end
      print("charted")
    ]])
    assert.are.equal(0, status, out)
    assert.are.equal("charted\n", out)
  end)

  it("gives a log axis spanning less than a decade intermediate ticks", function()
    local s = svg.chart({ title = "t", x = { unit = "B", log = true }, y = { unit = "s", log = true },
      series = { { name = "a", points = { { x = 8, y = 1.3e-3 }, { x = 64, y = 2.5e-3 } } } } })
    local labels = {}
    for x in s:gmatch('text%-anchor="end">([^<]*)</text>') do labels[#labels + 1] = x end
    assert.is_true(#labels >= 4, table.concat(labels, ", "))
    assert.matches("1.5 ms", table.concat(labels, ","), 1, true)
    assert.matches("2 ms", table.concat(labels, ","), 1, true)
  end)

  it("keeps a margin after the longest legend entry", function()
    local long = "a rather long series name, processes"
    local s = svg.chart({ title = "t", x = {}, y = {}, series = { { name = long, points = { { x = 1, y = 1 }, { x = 2, y = 2 } } } } })
    local x = tonumber(s:match('<text x="(%d+)" y="%d+" font%-size="12">' .. long))
    assert.is_true(x + #long * 7 <= 760, "legend text starts at " .. x)
  end)

  it("draws steps, and markers the full height of the plot", function()
    local s = svg.chart({ title = "t", x = { min = 0, max = 3 }, y = { min = 0 },
      series = { { name = "rps", steps = true, points = { { x = 0.5, y = 10 }, { x = 1.5, y = 10 }, { x = 2.5, y = 0 } } } },
      markers = { { x = 1.2, name = "the crash" } } })
    local line = assert(s:match('<polyline[^>]*points="([^"]*)"'))
    local n = 0
    for _ in line:gmatch("%S+") do n = n + 1 end
    assert.are.equal(6, n)                     -- two corners a phase
    -- the step down is vertical: two corners at the same x
    local xs = {}
    for x in line:gmatch("([%d.]+),") do xs[#xs + 1] = x end
    assert.are.equal(xs[4], xs[5])
    local y1, y2 = s:match('stroke%-width="2" stroke%-dasharray="6,4"/>'), nil
    assert.is_truthy(y1)
    local top, bottom = s:match('<line x1="[%d.]+" y1="(%d+)" x2="[%d.]+" y2="(%d+)" stroke="#777777"')
    local frame_y, frame_h = s:match('<rect x="%d+" y="(%d+)" width="%d+" height="(%d+)" fill="none"')
    assert.are.equal(tonumber(frame_y) + tonumber(frame_h), tonumber(top))
    assert.are.equal(tonumber(frame_y), tonumber(bottom))
    assert.matches(">the crash<", s, 1, true)
  end)

  it("draws a series with line = false as points only, its legend an open circle", function()
    local pts = { { x = 1, y = 1, hollow = true }, { x = 2, y = 2, hollow = true } }
    local s = svg.chart({ title = "t", x = {}, y = {}, series = { { name = "starved", line = false, points = pts } } })
    assert.is_nil(s:find("<polyline", 1, true))
    local n = 0
    for _ in s:gmatch('<circle [^>]*fill="#ffffff"') do n = n + 1 end
    assert.are.equal(3, n)                     -- two points and the legend
    assert.matches("<polyline", svg.chart({ title = "t", x = {}, y = {}, series = { { name = "line", points = pts } } }), 1, true)
  end)

  it("says 'no data: <reason>' instead of drawing empty axes", function()
    local s = svg.chart({ title = "t", x = { log = true }, y = { log = true }, no_data_reason = "a side failed",
                          series = { { name = "a", points = { { x = 1 } } }, { name = "b", points = {} } } })
    assert.matches(">no data: a side failed<", s, 1, true)
    assert.is_nil(s:find("<polyline", 1, true))
    assert.is_nil(s:find("(log scale)", 1, true))
    s = svg.chart({ title = "t", series = {} })
    assert.matches(">no data: no series has a point to draw<", s, 1, true)
    s = svg.chart({ title = "t", no_data = "not measured — run failed: boom",
                    series = { { name = "a", points = { { x = 1, y = 1 }, { x = 2, y = 2 } } } } })
    assert.matches(">no data: not measured — run failed: boom<", s, 1, true)
  end)

  it("refuses malformed points, naming the series", function()
    local ok, err = pcall(svg.chart, { title = "t", series = { { name = "good", points = { { x = 1, y = 2 } } },
                                                              { name = "positional", points = { { 1, 2, 1, 3 } } } } })
    assert.is_false(ok)
    assert.matches("series 2 %(positional%), point 1 is not { x = number, y = number", err)
    ok, err = pcall(svg.chart, { title = "t", series = { { name = "s", points = { { x = "1", y = 2 } } } } })
    assert.is_false(ok)
    assert.matches("series 1 %(s%)", err)
    ok, err = pcall(svg.chart, { title = "t", series = { { name = "s", points = { { x = 1, y = {} } } } } })
    assert.is_false(ok)
  end)
end)

describe("lab verdicts on synthetic data", function()
  H.no_leaks()

  local function creation(ratios, sizes)
    sizes = sizes or { 0, 100, 200 }
    local s = {}
    for i, m in ipairs(sizes) do
      s["spawn_join/thread/" .. m] = { 1e-4, 1e-4, 1e-4 }
      s["spawn_join/process/" .. m] = { 1e-4 * ratios[i], 1e-4 * ratios[i], 1e-4 * ratios[i] }
    end
    return results({ sizes_mib = sizes }, s)
  end

  it("creation: flips at 1.5x and computes the crossover size", function()
    assert.are.equal("holds", (verdict_of("creation", creation({ 1.51, 1.6, 3 }))))
    assert.are.equal("contradicted", (verdict_of("creation", creation({ 1.49, 1.2, 1.0 }))))
    local v, cond = verdict_of("creation", creation({ 1.0, 2.0, 3.0 }))
    assert.are.equal("conditional", v)
    assert.matches("more than about 50 MiB", cond)
    v, cond = verdict_of("creation", creation({ 3.0, 1.25, 1.0 }))
    assert.are.equal("conditional", v)
    assert.matches("less than about 86 MiB", cond)
    assert.are.equal("not measured", (verdict_of("creation", results({ sizes_mib = { 0 } }, {}))))
  end)

  -- communication: spec/lab_communication_spec.lua

  -- The noise rule: `base` has a spread (p10 1 - 8 %, p90 1 + 8 %); the
  -- other side is constant, its median margin x 1.06 either way, its p10
  -- just above (1.02) or just below (0.98) margin x base's p90.
  local BASE = { 0.9, 1.0, 1.1 }
  local function scaled(t, k) local r = {} for i, x in ipairs(t) do r[i] = x * k end return r end
  local function side(margin, above) local x = margin * 1.08 * (above and 1.02 or 0.98); return { x, x, x } end

  it("the noise rule: overlapping spreads are within noise, on both sides of the margin", function()
    local b = stats.summary(BASE)
    assert.are.equal("above", stats.versus(stats.summary(side(1.2, true)), b, 1.2))
    assert.are.equal("within noise", stats.versus(stats.summary(side(1.2, false)), b, 1.2))
    assert.are.equal("below", stats.versus(stats.summary({ 1.0 }), b, 1.2))
    assert.are.equal("within noise", stats.versus(stats.summary({ 1.05 }), b, 1.0))
    assert.is_nil(stats.versus(stats.summary({}), b, 1.2))
  end)

  it("creation: a size whose spreads overlap is within noise, and no crossover comes from it", function()
    local function spread(above_at, sizes)
      local s = {}
      for i, m in ipairs(sizes) do
        s["spawn_join/thread/" .. m] = scaled(BASE, 1e-4)
        s["spawn_join/process/" .. m] = above_at[i] == "below" and { 1e-4, 1e-4, 1e-4 }
          or scaled(side(1.5, above_at[i]), 1e-4)
      end
      return results({ sizes_mib = sizes }, s)
    end
    assert.are.equal("holds", (verdict_of("creation", spread({ true, true, true }, { 0, 100, 200 }))))
    local v, cond = verdict_of("creation", spread({ true, false, true }, { 0, 100, 200 }))
    assert.are.equal("holds", v)
    assert.matches("within noise at %+100 MiB", cond)
    -- below at 0, within noise at 100, above at 200: the crossing lies
    -- between the two sizes outside the noise
    v, cond = verdict_of("creation", spread({ "below", false, true }, { 0, 100, 200 }))
    assert.are.equal("conditional", v)
    assert.matches("more than about %d+ MiB", cond)
    assert.matches("r = [%d.]+ at %+0 MiB, [%d.]+ at %+200 MiB", cond)
    assert.matches("within noise at %+100 MiB", cond)
  end)

  it("creation: every size within noise is the verdict 'within noise', not 'not measured'", function()
    local s = {}
    for _, m in ipairs({ 0, 100 }) do
      s["spawn_join/thread/" .. m] = scaled(BASE, 1e-4)
      s["spawn_join/process/" .. m] = scaled(side(1.5, false), 1e-4)
    end
    local v, cond = verdict_of("creation", results({ sizes_mib = { 0, 100 } }, s))
    assert.are.equal("within noise", v)
    assert.matches("^at every parent size measured", cond)
  end)

  -- cpu results from samples: cfg["kernel/thread/2"] = { sample, ... }, one
  -- per round; a sample is a time, or { t =, cpu =, steal =, other = }:
  -- cpu the workers' CPU time (default: the serial run's work, 1 s, at
  -- most min(w, C) cores for t), steal the seconds stolen (default 0),
  -- other the cores' worth of other work on the machine (default 0).
  -- The serial run: 1 s of CPU time in 1 s, every round.
  local function cpu_results(cfg, opts)
    opts = opts or {}
    local C = opts.cores or 2
    local data = { cores = C, workers = opts.workers or { 1, C }, samples = {} }
    local series, rounds = {}, 0
    for key, list in pairs(cfg) do
      local use = math.min(tonumber(key:match("/(%d+)$")) or 1, C)
      local recs, ts = {}, {}
      for r, x in ipairs(list) do
        if type(x) == "number" then x = { t = x } end
        local cpu = x.cpu
        if cpu == nil then cpu = math.min(1, use * x.t) elseif cpu == false then cpu = nil end
        recs[r] = { round = r, t = x.t, cpu = cpu, steal = x.steal or 0, busy = (cpu or 0) + (x.other or 0) * x.t, tick = x.tick }
        ts[r] = x.t
      end
      data.samples[key], series[key] = recs, ts
      rounds = math.max(rounds, #list)
    end
    local serial = {}
    for r = 1, rounds do serial[r] = 1 end
    if not cfg["kernel/serial"] then
      data.samples["kernel/serial"], series["kernel/serial"] = {}, serial
      for r = 1, rounds do data.samples["kernel/serial"][r] = { round = r, t = 1, cpu = 1, steal = 0, busy = 1 } end
    end
    return results({ min_kept = opts.min_kept or 2 }, series, data)
  end
  local function rep(n, x) local t = {} for i = 1, n do t[i] = x end return t end
  local function concat(a, b) local t = {} for _, x in ipairs(a) do t[#t + 1] = x end for _, x in ipairs(b) do t[#t + 1] = x end return t end
  -- a sample of t seconds that the machine starved, for `why`, with use
  -- cores of C: steal took 30 % of the cores' time; the workers got half
  -- their cores while other work kept the machine busy; or they got their
  -- cores but did half the work per CPU-second
  local function starved(why, t, use, C)
    if why == "steal" then return { t = t, steal = 0.3 * t * use } end
    if why == "cpu" then return { t = t, cpu = 0.5 * use * t, other = C - 0.5 * use } end
    return { t = t, cpu = use * t, steal = 0 }            -- 2x the CPU time for the work
  end
  -- both kinds: 1 worker 1 s, 2 workers 1/sp and 1/st s, n rounds
  local function scaling(sp, st, n, cores)
    n = n or 4
    return cpu_results({ ["kernel/process/1"] = rep(n, 1), ["kernel/process/2"] = rep(n, 1 / sp),
                         ["kernel/thread/1"] = rep(n, 1), ["kernel/thread/2"] = rep(n, 1 / st) }, { cores = cores })
  end

  it("cpu: flips at a scaling of 1.5 on 2 cores, and the condition holds no measured number", function()
    local v, cond = verdict_of("cpu", scaling(1.51, 1.9))
    assert.are.equal("holds", v)
    assert.are.equal(cond, select(2, verdict_of("cpu", scaling(1.98, 1.7))))
    assert.is_nil(cond:gsub("1%.50×", ""):gsub("2 cores", ""):gsub("1 to 2", ""):find("%d"))
    v, cond = verdict_of("cpu", scaling(1.9, 1.49))
    assert.are.equal("conditional", v)
    assert.matches("^the workers are processes: threads fall short of 1.50×", cond)
    v, cond = verdict_of("cpu", scaling(1.2, 1.8))
    assert.are.equal("conditional", v)
    assert.matches("^the workers are threads: processes fall short", cond)
    -- workers that leave the cores idle did not want them: the sample counts
    assert.are.equal("contradicted", (verdict_of("cpu", scaling(1.49, 1.0))))
    assert.are.equal("not measured", (verdict_of("cpu", scaling(1.9, 1.9, 4, 1))))
  end)

  it("cpu: a scaling whose spreads overlap the mark is the verdict 'within noise', not 'not measured'", function()
    -- threads at 2 workers: p10 - p90 0.63 - 0.70 s against 1 s; 1.5 x 0.70 > 1
    local function spread(wide)
      return cpu_results({ ["kernel/process/1"] = rep(5, 1), ["kernel/process/2"] = rep(5, 0.52),
                           ["kernel/thread/1"] = rep(5, 1),
                           ["kernel/thread/2"] = wide and { 0.62, 0.64, 0.65, 0.66, 0.72 } or { 0.62, 0.63, 0.64, 0.65, 0.66 } })
    end
    assert.are.equal("holds", (verdict_of("cpu", spread(false))))
    local v, cond, full = verdict_of("cpu", spread(true))
    assert.are.equal("within noise", v)
    assert.matches("^the scaling from 1 to 2 workers is too close to 1.50×", cond)
    -- which kind is within the noise is said in the reading, not the condition
    assert.matches("For threads the p10 – p90 of the timings overlap the 1.50× mark.", full.reading, 1, true)
    assert.are.equal("within noise — " .. cond, lab.verdict_text({ verdict = v, condition = cond }))
  end)

  -- threads scale 1.33x on fair samples (leaving a core idle), but 18 of
  -- their 20 single-worker samples were starved and took 2.2 s: with them
  -- the p10 of T(thread, 1) (2.08 s) is above 1.5 x 0.75 s
  for _, why in ipairs({ "steal", "cpu", "throughput" }) do
    it("cpu: samples starved by " .. why .. " are left out: a verdict that holds only with them does not", function()
      local r = cpu_results({ ["kernel/process/1"] = rep(20, 1), ["kernel/process/2"] = rep(20, 0.52),
                              ["kernel/thread/1"] = concat(rep(2, 1), rep(18, starved(why, 2.2, 1, 2))),
                              ["kernel/thread/2"] = rep(20, 0.75) })
      local v, cond, full = verdict_of("cpu", r)
      assert.are.equal("conditional", v)
      assert.matches("^the workers are processes: threads fall short", cond)
      assert.matches("the verdict left out 18 as starved: 18 by " .. ({ steal = "steal", cpu = "CPU time", throughput = "work per CPU%-second" })[why], full.reading)
      assert.matches("(18 of 40 samples starved)", full.thread, 1, true)
      -- with too few left, not measured, saying why
      r.params.min_kept = 3
      v, cond = verdict_of("cpu", r)
      assert.are.equal("not measured", v)
      assert.matches("^too few samples that were not starved %(3 needed%): 1 thread 2 of 20 left; starved 18 by", cond)
    end)
  end

  it("cpu: starved samples are left out: a verdict within noise only with them holds", function()
    -- 3 of 12 samples of 2 threads were starved by steal and took 0.75 s:
    -- with them the p90 of T(thread, 2) is 0.75 s, and 1.5 x that overlaps 1 s
    local function r(steal)
      local two = rep(12, 0.52)
      for i = 10, 12 do two[i] = { t = 0.75, steal = steal * 0.75 * 2 } end
      return cpu_results({ ["kernel/process/1"] = rep(12, 1), ["kernel/process/2"] = rep(12, 0.52),
                           ["kernel/thread/1"] = rep(12, 1), ["kernel/thread/2"] = two })
    end
    local v, _, full = verdict_of("cpu", r(0.3))
    assert.are.equal("holds", v)
    assert.matches("left out 3 as starved: 3 by steal", full.reading)
    -- steal is a share of the cores the sample used, starved above 10 %
    assert.are.equal("holds", (verdict_of("cpu", r(0.11))))
    assert.are.equal("within noise", (verdict_of("cpu", r(0.09))))
  end)

  it("cpu: each way of starving a sample, on both sides of its threshold", function()
    local cpu_exp = require "procthread.lab.cpu"
    local function why(sample, w)
      local cfg = { ["kernel/thread/1"] = rep(3, 1) }
      cfg[("kernel/thread/%d"):format(w)] = { sample }
      return cpu_exp.analyse(cpu_results(cfg, { workers = { 1, w } })).thread[w].all[1].starved
    end
    -- steal: seconds beyond one /proc/stat tick (0.01 s) over t x
    -- min(w, C); 1 worker uses 1 core, 4 use 2
    assert.are.equal("steal", why({ t = 1, steal = 0.12 }, 1))
    assert.is_nil(why({ t = 1, steal = 0.10 }, 1))
    assert.are.equal("steal", why({ t = 0.5, steal = 0.12 }, 4))
    assert.is_nil(why({ t = 0.5, steal = 0.10 }, 4))
    -- CPU time under 0.75 of the cores, taken by other work
    assert.are.equal("cpu", why({ t = 0.5, cpu = 0.74, other = 0.6 }, 2))
    assert.is_nil(why({ t = 0.5, cpu = 0.76, other = 0.6 }, 2))
    -- ... not when the cores sat idle: workers that cannot use them
    assert.is_nil(why({ t = 0.5, cpu = 0.5, other = 0 }, 2))
    assert.are.equal("cpu unknown", why({ t = 0.5, cpu = false }, 2))
    -- work per CPU-second against the 1-worker rate (1 s of CPU time)
    assert.are.equal("throughput", why({ t = 0.7, cpu = 1 / 0.74 }, 2))
    assert.is_nil(why({ t = 0.7, cpu = 1 / 0.76 }, 2))
    -- and for 1 worker against the serial run of the same round
    assert.are.equal("throughput", why({ t = 1.4, cpu = 1 / 0.74 }, 1))
    -- a sample shorter than a few ticks: one tick of steal may be a few
    -- nanoseconds (each reading truncates), two are at least one tick
    assert.is_nil(why({ t = 0.05, steal = 0.01 }, 1))
    assert.are.equal("steal", why({ t = 0.05, steal = 0.02 }, 1))
    -- summed over 2 CPUs' lines, the resolution is 2 ticks
    assert.is_nil(why({ t = 0.05, steal = 0.02, tick = 0.02 }, 1))
    assert.are.equal("steal", why({ t = 0.05, steal = 0.03, tick = 0.02 }, 1))
    -- the 1-worker rate is the median of the fair ones only: with 3 of 5
    -- doing half the work per CPU-second, it is still 1, not 0.5
    local cfg = { ["kernel/thread/1"] = concat(rep(2, 1), rep(3, starved("throughput", 2, 1, 2))),
                  ["kernel/thread/2"] = { { t = 0.7, cpu = 1 / 0.7 } } }
    assert.are.equal("throughput", cpu_exp.analyse(cpu_results(cfg)).thread[2].all[1].starved)
  end)

  it("cpu: starved samples are shown in the tables and drawn hollow, apart from the medians", function()
    local cpu_exp = require "procthread.lab.cpu"
    local r = cpu_results({ ["kernel/process/1"] = rep(4, 1), ["kernel/process/2"] = rep(4, 0.52),
                            ["kernel/process/3"] = rep(4, 0.52), ["kernel/thread/1"] = rep(4, 1),
                            ["kernel/thread/2"] = rep(4, 0.52),
                            ["kernel/thread/3"] = concat(rep(2, 0.52), rep(2, starved("steal", 3, 2, 2))) },
                          { workers = { 1, 2, 3 } })
    assert.are.equal("holds", (verdict_of("cpu", r)))
    local speed, given = cpu_exp.table(r)[1], cpu_exp.table(r)[2]
    assert.matches("**2 of 4 starved**", speed.rows[4][3], 1, true)           -- 3 threads
    assert.is_nil(speed.rows[4][2]:find("starved", 1, true))
    assert.matches("^1.92×", speed.rows[4][3])                                  -- the median of the others
    assert.are.same({ "3 threads", "2 of 4" }, { given.rows[6][1], given.rows[6][2] })
    assert.matches("2 by steal", given.rows[6][3])
    local chart = cpu_exp.charts(r)[1]
    local hollow, names = 0, {}
    for _, se in ipairs(chart.series) do
      names[#names + 1] = se.name
      for _, p in ipairs(se.points) do if p.hollow then hollow = hollow + 1; assert.are.equal(3, math.floor(p.x + 0.5)) end end
    end
    assert.are.equal(2, hollow)
    assert.matches("starved samples, threads", table.concat(names, ";"), 1, true)
    local out = svg.chart(chart)
    assert.matches('fill="#ffffff" stroke=', out)
  end)

  it("cpu: old results without per-sample records are not measured, not judged", function()
    local r = results({}, { ["kernel/serial"] = { 1 }, ["kernel/process/1"] = { 1 }, ["kernel/process/2"] = { 0.5 },
                            ["kernel/thread/1"] = { 1 }, ["kernel/thread/2"] = { 0.5 } }, { cores = 2, workers = { 1, 2 } })
    local v, cond = verdict_of("cpu", r)
    assert.are.equal("not measured", v)
    assert.matches("results of an older lab", cond, 1, true)
    r.data.samples = {}
    assert.matches("the kernel was not measured with 1 and 2 processes", select(2, verdict_of("cpu", r)), 1, true)
  end)

  it("cpu: the worker counts always include the core count", function()
    local counts = require("procthread.lab.cpu").worker_counts
    assert.are.same({ 1, 2, 3, 4 }, counts(2))
    assert.are.same({ 1, 2, 4, 6, 8, 12 }, counts(6))
    assert.are.same({ 1, 2 }, counts(1))
  end)

  it("cpu: a CPU quota (cgroup) below the CPUs is not measured, saying why", function()
    local r = scaling(1.9, 1.9)
    assert.are.equal("holds", (verdict_of("cpu", r)))
    r.data.quota = 1.5
    local v, cond = verdict_of("cpu", r)
    assert.are.equal("not measured", v)
    assert.matches("a CPU quota (cgroup cpu.max) gives the lab 1.50 cores' worth", cond, 1, true)
    r.data.quota = 2
    assert.are.equal("holds", (verdict_of("cpu", r)))
  end)

  it("cpu: reads the tightest cgroup quota along the cgroup and its ancestors, v2 or v1", function()
    local util = require "procthread.lab.util"
    local function quota(files)
      return util.cpu_quota(function(path) return files[path] end)
    end
    assert.is_nil(quota({}))
    assert.is_nil(quota({ ["/proc/self/cgroup"] = "0::/\n", ["/sys/fs/cgroup/cpu.max"] = "max 100000\n" }))
    assert.are.equal(0.5, quota({ ["/proc/self/cgroup"] = "0::/\n", ["/sys/fs/cgroup/cpu.max"] = "50000 100000\n" }))
    -- the parent's quota limits the child's
    assert.are.equal(1.5, quota({ ["/proc/self/cgroup"] = "0::/a/b\n", ["/sys/fs/cgroup/a/b/cpu.max"] = "max 100000\n",
                                  ["/sys/fs/cgroup/a/cpu.max"] = "150000 100000\n", ["/sys/fs/cgroup/cpu.max"] = "max 100000\n" }))
    -- v1: cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us, not cpuacct's
    local v1 = { ["/proc/self/cgroup"] = "4:cpuacct:/x\n3:cpu,cpuacct:/c\n",
                 ["/sys/fs/cgroup/cpu/c/cpu.cfs_quota_us"] = "300000\n", ["/sys/fs/cgroup/cpu/c/cpu.cfs_period_us"] = "100000\n",
                 ["/sys/fs/cgroup/cpu/cpu.cfs_quota_us"] = "-1\n", ["/sys/fs/cgroup/cpu/cpu.cfs_period_us"] = "100000\n" }
    assert.are.equal(3, quota(v1))
  end)

  -- the serial run is the yardstick of the 1-worker samples' work per
  -- CPU-second: a starved one must not be it
  it("cpu: starved serial samples are no yardstick: every one starved is not measured, not a super-linear 'holds'", function()
    -- the serial run (stolen from) and the 1-worker samples took 2 s of
    -- CPU time for 1 s of work: 4x from 1 to 2 workers on 2 cores
    local slow = { t = 2, cpu = 2 }
    local r = cpu_results({ ["kernel/serial"] = rep(4, { t = 2, cpu = 2, steal = 1 }), ["kernel/process/1"] = rep(4, slow),
                            ["kernel/process/2"] = rep(4, 0.5), ["kernel/thread/1"] = rep(4, slow), ["kernel/thread/2"] = rep(4, 0.5) })
    local v, cond, full = verdict_of("cpu", r)
    assert.are.equal("not measured", v)
    assert.matches("serial 0 of 4 left; starved 4 by steal", cond, 1, true)
    assert.matches("the serial run and of 1 and 2 workers, the verdict left out 4 as starved", full.reading, 1, true)
    -- no made-up figures
    assert.is_nil(full.reading:find("0.00×", 1, true))
    assert.is_nil(full.reading:find("?", 1, true))
  end)

  it("cpu: a round whose serial sample is starved holds its 1-worker samples against the median of the fair ones", function()
    local cpu_exp = require "procthread.lab.cpu"
    -- round 4's serial run was stolen from and took 2 s of CPU time; so
    -- did its 1-thread sample, which against it would look fair
    local r = cpu_results({ ["kernel/serial"] = concat(rep(3, 1), { { t = 2, cpu = 2, steal = 1 } }),
                            ["kernel/thread/1"] = concat(rep(3, 1), { { t = 2, cpu = 2 } }), ["kernel/thread/2"] = rep(4, 0.52) })
    local a = cpu_exp.analyse(r)
    assert.are.equal("steal", a.serial.all[4].starved)
    assert.are.equal(0.5, a.thread[1].all[4].rate)
    assert.are.equal("throughput", a.thread[1].all[4].starved)
    assert.is_nil(a.thread[1].all[3].starved)
  end)

  it("cpu: the serial run's own work per CPU-second is held against the calibration's", function()
    local cpu_exp = require "procthread.lab.cpu"
    -- every serial run took 2 s of CPU time for what the calibration did in 1 s
    local r = cpu_results({ ["kernel/serial"] = rep(4, { t = 2, cpu = 2 }), ["kernel/process/1"] = rep(4, 2),
                            ["kernel/process/2"] = rep(4, 0.5), ["kernel/thread/1"] = rep(4, 2), ["kernel/thread/2"] = rep(4, 0.5) })
    r.data.calibrated_s = 1
    assert.are.equal("throughput", cpu_exp.analyse(r).serial.all[1].starved)
    local v, cond = verdict_of("cpu", r)
    assert.are.equal("not measured", v)
    assert.matches("serial 0 of 4 left; starved 4 by work per CPU-second", cond, 1, true)
    -- within 0.75x of the calibration it is fair
    r.data.calibrated_s = 1.9
    assert.is_nil(cpu_exp.analyse(r).serial.all[1].starved)
  end)

  it("cpu: a scaling above C x outside the noise is not measured, never a finding", function()
    -- 2 threads did 1 s of work in 0.3 s on 2 cores: 3.3x
    local r = cpu_results({ ["kernel/process/1"] = rep(4, 1), ["kernel/process/2"] = rep(4, 0.52),
                            ["kernel/thread/1"] = rep(4, 1), ["kernel/thread/2"] = rep(4, 0.3) })
    local v, cond = verdict_of("cpu", r)
    assert.are.equal("not measured", v)
    assert.matches("^the scaling of threads from 1 to 2 workers is above 2× outside the noise", cond)
    -- 2x within the noise is no such sign
    r = cpu_results({ ["kernel/process/1"] = rep(4, 1), ["kernel/process/2"] = rep(4, 0.52),
                      ["kernel/thread/1"] = rep(4, 1), ["kernel/thread/2"] = { 0.48, 0.5, 0.5, 0.52 } })
    assert.are.equal("holds", (verdict_of("cpu", r)))
  end)

  it("cpu: the reading leaves out a clause whose figure is missing", function()
    local cpu_exp = require "procthread.lab.cpu"
    local text = cpu_exp.reading({ process = { scale = 1.9, net = 1.8, single = 0.7, bw = 2 }, thread = {} }, 2, "None of them")
    assert.matches("ran 1.90× faster with processes (medians", text, 1, true)
    assert.matches("2 workers reached 1.80× with processes.", text, 1, true)
    assert.matches("One process ran the kernel at 0.70× the parent's speed, so 2 of them reached only 1.80×", text, 1, true)
    assert.matches("The best speedups were at 2 process workers.", text, 1, true)
    assert.is_nil(text:find("thread", 1, true))
    text = cpu_exp.reading({ process = { single = 0.7 }, thread = {} }, 2, "None of them")
    assert.are.equal("One process ran the kernel at 0.70× the parent's speed: the cost is per process, not a lack of parallelism. None of them.", text)
    assert.is_nil(text:find("0.00", 1, true))
  end)

  it("cpu: the array fill's speedup is over 1 worker of the kind, not over the parent's slower fill", function()
    local cpu_exp = require "procthread.lab.cpu"
    local r = scaling(1.9, 1.9)
    for k, t in pairs({ ["fill/serial"] = 2, ["fill/process/1"] = 1.2, ["fill/process/2"] = 0.8,
                        ["fill/thread/1"] = 1, ["fill/thread/2"] = 0.5 }) do
      r.series[k] = { samples = { t, t, t }, failed = 0, errors = {} }
    end
    local _, _, full = verdict_of("cpu", r)
    assert.matches("array fill best 2.00× over 1 worker at 2", full.thread, 1, true)
    assert.matches("array fill best 1.50× over 1 worker at 2", full.process, 1, true)
    local rows = cpu_exp.table(r)[1].rows
    assert.matches("^1.00×", rows[2][5])
    assert.matches("^2.00×", rows[3][5])
  end)

  local function memory(p, t)
    local s = {}
    local names = { "upvalue", "global", "private array", "shared array" }
    for i, name in ipairs(names) do
      if p[i] then s["seen/process/" .. name] = { p[i], p[i] } end
      if t[i] then s["seen/thread/" .. name] = { t[i], t[i] } end
    end
    return results({ counts = { 1 } }, s)
  end

  it("memory: decides from the visibility matrix", function()
    local v, cond = verdict_of("memory", memory({ 0, 0, 0, 1 }, { 0, 0, 1, 1 }))
    assert.are.equal("conditional", v)
    assert.matches("through private array but not through upvalue, global", cond)
    assert.are.equal("holds", (verdict_of("memory", memory({ 0, 0, 0, 1 }, { 1, 1, 1, 1 }))))
    assert.are.equal("contradicted", (verdict_of("memory", memory({ 0, 0, 1, 1 }, { 1, 1, 1, 1 }))))
    assert.are.equal("contradicted", (verdict_of("memory", memory({ 0, 0, 0, 1 }, { 0, 0, 0, 1 }))))
    assert.are.equal("not measured", (verdict_of("memory", memory({ 0, 0 }, { 0, 0 }))))
  end)

  it("memory: an idle worker's cost is the slope over the counts, with its spread, never negative", function()
    local mem = require "procthread.lab.memory"
    -- per-worker samples: total = 100 KiB of noise + 20 KiB each (+-5 KiB)
    local s = {}
    for _, n in ipairs({ 4, 16, 64 }) do
      s["idle_pss/thread/" .. n] = { (100 + 20 * n - 5) / n, (100 + 20 * n) / n, (100 + 20 * n + 5) / n }
      s["idle_pss/process/" .. n] = { (300 - 5 * n - 10) / n, (300 - 5 * n + 10) / n }  -- shrinking: noise
    end
    local r = results({ counts = { 4, 16, 64 } }, s)
    local c = mem.idle_cost(r, "thread")
    assert.is_true(math.abs(c.kib - 20) < 0.5, c.kib)
    assert.is_true(c.p10 < 20 and c.p90 > 20)
    assert.are.equal(4, c.from); assert.are.equal(64, c.to)
    local p = mem.idle_cost(r, "process")
    assert.matches("^0 B %(p10 – p90 0 B – ", mem.cost_text(p))     -- never below zero
    local chart = mem.charts(r)[1]
    for _, se in ipairs(chart.series) do
      for _, pt_ in ipairs(se.points) do assert.is_true(pt_.y >= 0 and pt_.lo >= 0, se.name) end
    end
  end)

  local function isolation(pp, tp, ps)
    local s = { ["corrupted/process/private"] = { pp }, ["corrupted/thread/private"] = { tp } }
    if ps then s["corrupted/process/shared"] = { ps } end
    return results({ others = 3, n = 100 }, s)
  end

  it("isolation: decides from who found corruption", function()
    assert.are.equal("holds", (verdict_of("isolation", isolation(0, 4, 0))))
    local v, cond = verdict_of("isolation", isolation(0, 4, 4))
    assert.are.equal("conditional", v)
    assert.matches("100%% of the observers of a shared array", cond)
    assert.are.equal("contradicted", (verdict_of("isolation", isolation(1, 4, 0))))
    assert.are.equal("contradicted", (verdict_of("isolation", isolation(0, 0, 0))))
    assert.are.equal("not measured", (verdict_of("isolation", results({ others = 3 }, {}))))
  end)

  it("isolation: the reading follows the data", function()
    local _, _, v = verdict_of("isolation", isolation(0, 4, 0))
    assert.matches("kept their own copy%-on%-write pages", v.reading)
    _, _, v = verdict_of("isolation", isolation(4, 4, 0))
    assert.is_nil(v.reading:find("kept their own", 1, true))
    assert.matches("no observer kept a copy of its own", v.reading)
  end)

  -- outcome per kind and mode: "contained" | "down"
  local function failure(p, t)
    local s = {}
    for kind, modes in pairs({ process = p, thread = t }) do
      for mode, o in pairs(modes) do
        s[("survived/%s/%s"):format(kind, mode)] = { o == "down" and 0 or 1 }
        s[("finished/%s/%s"):format(kind, mode)] = { o == "down" and 0 or (o == "partial" and 1 or 2) }
      end
    end
    return results({ workers = 3, modes = { "error", "segv" } }, s)
  end

  it("failure: decides from survival and finished siblings", function()
    local v, cond = verdict_of("failure", failure({ error = "contained", segv = "contained" }, { error = "contained", segv = "down" }))
    assert.are.equal("conditional", v)
    assert.matches("the failure is SIGSEGV: that took the whole thread group down", cond)
    assert.are.equal("holds", (verdict_of("failure", failure({ error = "contained", segv = "contained" }, { error = "down", segv = "down" }))))
    assert.are.equal("contradicted", (verdict_of("failure", failure({ error = "contained", segv = "down" }, { error = "down", segv = "down" }))))
    assert.are.equal("contradicted", (verdict_of("failure", failure({ error = "contained", segv = "partial" }, { error = "down", segv = "down" }))))
    assert.are.equal("contradicted", (verdict_of("failure", failure({ error = "contained", segv = "contained" }, { error = "contained", segv = "contained" }))))
    assert.are.equal("not measured", (verdict_of("failure", failure({}, {}))))
  end)

  it("a verdict that raises or answers nonsense becomes 'not measured'", function()
    local v = lab.verdict({ verdict = function() error("boom") end }, {})
    assert.are.equal("not measured", v.verdict)
    assert.matches("boom", v.condition)
    assert.are.equal("not measured", lab.verdict({ verdict = function() return { verdict = "maybe" } end }, {}).verdict)
  end)
end)

describe("lab experiments in tiny mode", function()
  H.no_leaks()

  for _, name in ipairs({ "memory", "communication", "isolation", "creation", "failure", "cpu" }) do
    it(name .. " runs, records samples and reaches a verdict", function()
      local exp = assert(lab.load(name))
      local res = lab.run_experiment(exp, { mode = "tiny", progress = false })
      assert.is_nil(res.error)
      local n, failed, msgs = 0, 0, {}
      for k, s in pairs(res.series) do
        n = n + #s.samples
        failed = failed + s.failed
        for _, e in ipairs(s.errors) do msgs[#msgs + 1] = k .. ": " .. e.message end
      end
      assert.is_true(n > 0)
      assert.are.equal(0, failed, table.concat(msgs, "\n"))
      assert.is_true(lab.VERDICTS[res.verdict.verdict])
      -- "not measured" is only acceptable when the machine was too busy
      -- to give the workers their cores (the cpu rule's own check), or the
      -- few tiny samples' spreads overlap (the noise rule)
      if res.verdict.verdict == "not measured" then
        local c = res.verdict.condition
        assert.is_truthy(c:match("^too few samples that were not starved") or c:match("within noise")
          or c:match("outside the noise, more than %d cores can give") or c:match("^a CPU quota"), name .. ": " .. c)
      end
      assert.is_string(res.verdict.condition)
      if name == "cpu" then
        -- in rounds: every kernel configuration's sample of round 1 comes
        -- before any of round 2, and a round has one of each
        local first2, last1 = math.huge, -1
        for key, recs in pairs(res.data.samples) do
          assert.are.same({ 1, 2 }, { recs[1].round, recs[2].round }, key)
          assert.are.equal(2, #recs, key)
          last1, first2 = math.max(last1, recs[1].at), math.min(first2, recs[2].at)
          assert.is_number(recs[1].steal)
        end
        assert.is_true(last1 < first2)
      end
      -- what was recorded survives JSON and gives the same verdict again
      local back = json.decode(json.encode(res))
      assert.are.same(res.verdict, lab.verdict(exp, back))
    end)
  end

  it("cpu under taskset -c 0: pt.cpu_count() is 1 and the experiment says one core, not measured", function()
    if not require("procthread.lab.util").execute("taskset -c 0 true >/dev/null 2>&1") then
      return pending("taskset cannot run here")
    end
    local status, out = H.fresh_under("taskset -c 0", [[
      local pt = require "procthread"
      local lab = require "procthread.lab"
      local res = lab.run_experiment(assert(lab.load("cpu")), { mode = "tiny", progress = false })
      print("count", pt.cpu_count(), "cores", res.data.cores, res.verdict.verdict, res.verdict.condition)
    ]])
    assert.are.equal(0, status, out)
    assert.matches("count\t1\tcores\t1\tnot measured\tone core", out, 1, true)
  end)

  it("ctx:rounds goes over every item in turn after the warm-ups, the order reversed every other round", function()
    local seen = {}
    local exp = { name = "rounds", verdict = function() return { verdict = "holds" } end,
                  run = function(ctx)
                    ctx:rounds({ "a", "b", "c" }, 3, 1, function(item, r) seen[#seen + 1] = item .. r end)
                  end }
    lab.run_experiment(exp, { mode = "tiny", progress = false })
    assert.are.equal("c0 b0 a0 a1 b1 c1 c2 b2 a2 a3 b3 c3", table.concat(seen, " "))
  end)

  it("reads the machine's busy and steal time from /proc/stat", function()
    local util = require "procthread.lab.util"
    local a = assert(util.machine_cpu())
    assert.is_true(a.steal >= 0 and a.busy >= a.steal)
    -- 50 ms of this process's CPU time: five ticks of the machine's line
    -- (a fixed loop took under one tick on a fast machine under LuaJIT)
    local c0, x = os.clock(), 0
    while os.clock() - c0 < 0.05 do for i = 1, 1e4 do x = x + i % 3 end end
    local b = util.machine_cpu()
    assert.is_true(b.busy > a.busy and b.steal >= a.steal)
    assert.are.equal(0.01, b.tick)                  -- the machine's line: one tick
    -- the CPUs the lab may run on: all of them is the machine's line; one
    -- of several is its own line, less busy than the machine's
    local set, n = assert(util.allowed_cpus())
    assert.are.same(b.tick, util.machine_cpu(set).tick)
    local first
    for i in pairs(set) do first = math.min(first or i, i) end
    local one = assert(util.machine_cpu({ [first] = true }))
    assert.are.equal(0.01, one.tick)
    if n > 1 then assert.is_true(one.busy < util.machine_cpu().busy) end
    -- Cpus_allowed_list as /proc/self/status writes it
    local seti, ni = util.allowed_cpus(function() return "Name:\tx\nCpus_allowed_list:\t0-2,5,7-8\nMems_allowed_list:\t0\n" end)
    assert.are.equal(6, ni)
    assert.are.same({ [0] = true, [1] = true, [2] = true, [5] = true, [7] = true, [8] = true }, seti)
  end)

  it("records a missing feature as failed samples, not as data", function()
    local fake = setmetatable({ spawn = function() error("spawn is not here") end }, { __index = require "procthread" })
    local exp = assert(lab.load("creation"))
    local res = lab.run_experiment(exp, { mode = "tiny", progress = false, pt = fake })
    for _, s in pairs(res.series) do
      assert.are.equal(0, #s.samples)
      assert.is_true(s.failed > 0)
      assert.matches("spawn is not here", s.errors[1].message)
    end
    assert.are.equal("not measured", res.verdict.verdict)
  end)
end)

describe("lab progress", function()
  H.no_leaks()

  local function sink()
    local buf = {}
    return { write = function(self, ...) for _, x in ipairs({ ... }) do buf[#buf + 1] = x end end,
             flush = function() end, text = function() return table.concat(buf) end }
  end

  it("on a terminal redraws one line once a second has passed", function()
    local t = 0
    local out = sink()
    local p = lab.progress({ tty = true, out = out, now = function() return t end })
    p:start("creation", 2, 6)
    p:update("process spawn", 1, 10)
    assert.are.equal("", out.text())            -- not before a second
    t = 1.5
    p:update("process spawn", 3, 10)
    assert.are.equal("\r\27[K[2/6] creation: process spawn 3/10 (1.5 s)", out.text())
    p:done("holds")
    assert.matches("\r\27%[K%[2/6%] creation: holds %(1.5 s%)\n$", out.text())
  end)

  it("off a terminal writes one line per experiment", function()
    local t = 0
    local out = sink()
    local p = lab.progress({ tty = false, out = out, now = function() return t end })
    p:start("cpu", 1, 1)
    t = 5
    p:update("kernel", 1, 3)
    p:done("contradicted")
    assert.are.equal("[1/1] cpu: contradicted (5.0 s)\n", out.text())
  end)

  it("gives the whole lab's progress with an estimate of the time left", function()
    local t = 0
    local out = sink()
    local p = lab.progress({ tty = false, out = out, now = function() return t end })
    local typ = lab.typical.full
    p:plan({ "memory", "cpu" }, "full")
    p:start("memory", 1, 2)
    t = 2 * typ.memory                       -- twice as slow as typical
    p:done("holds")
    assert.matches(("lab %d s, about %d s left"):format(2 * typ.memory, 2 * typ.cpu), out.text(), 1, true)
  end)

  it("notes the CPU other work used during the run, not a stale load average", function()
    local a = { machine = 100, own = 10 }
    local b = { machine = 130, own = 20 }       -- 30 s of CPU, 10 of them ours, in 10 s
    assert.are.equal(2, lab.other_cores(a, b, 10))
    assert.are.equal(0, lab.other_cores(a, { machine = 105, own = 20 }, 10))   -- never below 0
    assert.is_nil(lab.other_cores(nil, b, 10))
    local note = report.load_note({ cores = 2, other_cores = 1.2, loadavg_before = { 0.1, 0.1, 0.1 } })
    assert.matches("other work used 1.20 of the 2 cores on average while the lab ran", note, 1, true)
    -- a high one-minute load average alone (left over from before) is no note
    assert.is_nil(report.load_note({ cores = 2, other_cores = 0.1, loadavg_before = { 5, 5, 5 } }))
    local t = lab.cpu_times()
    assert.is_number(t.machine); assert.is_number(t.own)
  end)

  it("prints verdicts in the report's words", function()
    assert.are.equal("holds only if messages are small", lab.verdict_text({ verdict = "conditional", condition = "messages are small" }))
    assert.are.equal("contradicted on this machine — x", lab.verdict_text({ verdict = "contradicted", condition = "x" }))
    assert.are.equal("**holds only if** y", report.verdict_text({ verdict = "conditional", condition = "y" }))
  end)
end)

describe("lab report", function()
  H.no_leaks()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() rmdir(dir) end)

  it("renders the stored results.json: claims table, sections, charts", function()
    local doc = assert(report.read(SPEC .. "/fixtures/results.json"))
    lab.reverdict(doc)
    local first = {}
    for _, e in ipairs(doc.experiments) do first[e.name] = e.verdict.verdict .. ": " .. tostring(e.verdict.condition) end
    lab.reverdict(doc)
    for _, e in ipairs(doc.experiments) do
      assert.are.equal(first[e.name], e.verdict.verdict .. ": " .. tostring(e.verdict.condition), e.name)
    end
    -- its creation run had two slow thread spawns at +32 MiB: the spreads
    -- overlap there, so that size is within noise and in no condition
    assert.matches("within noise at %+32 MiB", first.creation)
    local files = assert(report.render(doc, dir, { all = true }))
    local md = assert(read(dir .. "/REPORT.md"))
    -- the claims table comes first, one row per claim, backend included
    local first_table = md:find("| aspect | the claim |", 1, true)
    assert.is_truthy(first_table)
    assert.is_true(first_table < md:find("## Machine", 1, true))
    for _, row in ipairs({ "| memory |", "| communication |", "| isolation |", "| creation overhead |",
                           "| failure impact |", "| CPU use |", "| backend |" }) do
      assert.is_truthy(md:find(row, 1, true), row)
    end
    assert.matches("| backend |[^\n]*not measured", md)
    for _, e in ipairs(doc.experiments) do
      assert.is_truthy(md:find("## " .. e.name, 1, true))
    end
    for _, f in ipairs({ "creation.svg", "cpu.svg", "communication-latency.svg", "communication-throughput.svg" }) do
      local s = read(dir .. "/" .. f)
      assert.is_truthy(s, f)
      assert.matches("^<svg", s)
      assert.is_truthy(md:find("](" .. f .. ")", 1, true))
    end
    assert.is_true(#files >= 6)
    -- results.json written back decodes to the same document
    assert.are.same(json.decode(json.encode(doc)), json.decode(read(dir .. "/results.json")))
  end)

  it("procthread-lab compare puts two results side by side", function()
    local status, out = cli(("compare %s/fixtures/results.json %s/fixtures/results.json"):format(SPEC, SPEC))
    assert.are.equal(0, status, out)
    assert.matches("| aspect | verdict: ", out, 1, true)
    assert.matches("| creation overhead |", out, 1, true)
    -- the fixture holds no backend run: no row for it
    assert.is_nil(out:find("| backend |", 1, true))
    status, out = cli(("compare %s/fixtures/results.json"):format(SPEC))
    assert.are.equal(2, status, out)
  end)

  it("procthread-lab report re-renders from a results.json", function()
    local status, out = cli(("report %s/fixtures/results.json --out %s"):format(SPEC, dir))
    assert.are.equal(0, status, out)
    assert.is_truthy(read(dir .. "/REPORT.md"))
    assert.is_truthy(read(dir .. "/creation.svg"))
  end)
end)

describe("lab command line", function()
  H.no_leaks()
  local dir
  before_each(function() dir = tmpdir() end)
  after_each(function() rmdir(dir) end)

  it("lists the experiments", function()
    local status, out = cli("list")
    assert.are.equal(0, status, out)
    for _, n in ipairs({ "memory", "communication", "isolation", "creation", "failure", "cpu", "backend" }) do
      assert.matches(n, out)
    end
  end)

  it("runs a user's experiment file", function()
    local status, out = cli(("run %s/fixtures/my_experiment.lua --tiny --out %s"):format(SPEC, dir))
    assert.are.equal(0, status, out)
    local md = assert(read(dir .. "/REPORT.md"))
    assert.matches("| sleep overhead |", md, 1, true)
    assert.matches("## my_experiment", md, 1, true)
    local doc = assert(report.read(dir .. "/results.json"))
    assert.are.equal("my_experiment", doc.experiments[1].name)
    assert.are.equal(2, #doc.experiments[1].series["overhead/thread"].samples)
    assert.is_string(doc.machine.cpu_model)
    assert.is_number(doc.machine.cores)
    assert.is_string(doc.machine.kernel)
    assert.is_table(doc.machine.loadavg_before)
    assert.is_table(doc.machine.loadavg_after)
  end)

  -- a user's experiment whose run raises after recording a sample
  local function raising(dir_)
    local file = dir_ .. "/raises.lua"
    local f = assert(io.open(file, "w"))
    f:write([[
      return { name = "raises", aspect = "raising", claim = { process = "a", thread = "b" },
        run = function(ctx) ctx:add("x", {}, 1, "s"); error("the probe broke") end,
        verdict = function() return { verdict = "holds", condition = "computed anyway" } end,
        charts = function() return { { file = "raises.svg", title = "r", series = { { name = "x", points = { { x = 1, y = 1 }, { x = 2, y = 2 } } } } } } end }
    ]])
    f:close()
    return file
  end

  it("reports a run that raised as not measured, with the reason, and exits 1", function()
    local status, out = cli(("run %s --tiny --out %s"):format(raising(dir), dir))
    assert.are.equal(1, status, out)
    assert.matches("raises: run failed: [^\n]*the probe broke", out)
    local md = assert(read(dir .. "/REPORT.md"))
    assert.matches("| raising |[^\n]*not measured — run failed: [^\n]*the probe broke", md)
    assert.is_nil(md:find("computed anyway", 1, true))
    assert.matches(">no data: not measured — run failed: [^<]*the probe broke<", assert(read(dir .. "/raises.svg")))
    -- rendering the saved results again keeps it not measured
    local doc = assert(report.read(dir .. "/results.json"))
    lab.reverdict(doc)
    assert.are.equal("not measured", doc.experiments[1].verdict.verdict)
  end)

  -- found by attack: a verdict was computed (and the command exited 0)
  -- from an experiment whose every sample had failed
  it("reports an experiment whose every sample failed as not measured, and exits 1", function()
    local file = dir .. "/allfail.lua"
    local f = assert(io.open(file, "w"))
    f:write([[
      return { name = "allfail", aspect = "failing", claim = { process = "a", thread = "b" },
        run = function(ctx)
          for _, kind in ipairs({ "process", "thread" }) do
            ctx:time("x/" .. kind, { kind = kind }, { n = 3 }, function() return nil, "broken on purpose" end)
          end
        end,
        verdict = function() return { verdict = "holds", condition = "said anyway" } end,
        charts = function() return { { file = "../escaped.svg", title = "r", series = { { name = "x", points = {} } } },
                                     { file = "allfail.svg", title = "r", series = { { name = "x", points = {} } } } } end }
    ]])
    f:close()
    os.remove(dir .. "/../escaped.svg")
    local status, out = cli(("run %s --tiny --out %s"):format(file, dir))
    assert.are.equal(1, status, out)
    assert.matches("allfail: every sample failed %(x/process: broken on purpose%)", out)
    local md = assert(read(dir .. "/REPORT.md"))
    assert.matches("| failing |[^\n]*not measured — every sample failed", md)
    assert.is_nil(md:find("said anyway", 1, true))
    -- a chart names a file of the report's folder only
    assert.matches('chart file name "../escaped.svg" is not a plain file name', md, 1, true)
    assert.is_nil(read(dir .. "/../escaped.svg"))
    assert.is_truthy(read(dir .. "/allfail.svg"))
    local doc = assert(report.read(dir .. "/results.json"))
    lab.reverdict(doc)
    assert.are.equal("not measured", doc.experiments[1].verdict.verdict)
  end)

  it("refuses a sample that is not a number (ctx:add), naming the series", function()
    local ok, err = pcall(function()
      local res = lab.run_experiment({ name = "strs", run = function(ctx) ctx:add("k", {}, "12") end,
                                       verdict = function() return { verdict = "holds" } end },
                                     { mode = "tiny", progress = false })
      error(res.error, 0)
    end)
    assert.is_false(ok)
    assert.matches("ctx:add: series 'k': a sample must be a number, got string", err)
  end)

  it("shows only the claims that ran, unless --all asks for the full table", function()
    local status, out = cli(("run %s/fixtures/my_experiment.lua --tiny --out %s"):format(SPEC, dir))
    assert.are.equal(0, status, out)
    local md = assert(read(dir .. "/REPORT.md"))
    assert.is_nil(md:find("not run", 1, true))
    assert.is_nil(md:find("| memory |", 1, true))
    status, out = cli(("report %s/results.json --all --out %s/all"):format(dir, dir))
    assert.are.equal(0, status, out)
    md = assert(read(dir .. "/all/REPORT.md"))
    assert.matches("| memory |[^\n]*not measured — not run", md)
    assert.matches("| sleep overhead |", md, 1, true)
  end)

  it("says which Debian package to install when dkjson is missing", function()
    local fake = dir .. "/nojson"
    os.execute("mkdir " .. fake)
    local f = assert(io.open(fake .. "/dkjson.lua", "w"))
    f:write("error(\"module 'dkjson' not found\")\n"); f:close()
    local cmd = ("PROCTHREAD_LUA=%s LUA_PATH=%s LUA_CPATH=%s %s/bin/procthread-lab run %s/fixtures/my_experiment.lua --tiny --out %s 2>&1; echo \"::status:$?\"")
      :format(q(LUA), q(fake .. "/?.lua;" .. package.path), q(package.cpath), ROOT, SPEC, dir)
    local p = io.popen(cmd)
    local out = p:read("*a"); p:close()
    assert.matches("::status:1", out, 1, true)
    assert.matches("Debian: lua%-dkjson", out)
    assert.is_nil(read(dir .. "/REPORT.md"))
  end)

  it("rejects an unknown experiment with exit code 2", function()
    local status, out = cli("run no_such_experiment --out " .. dir)
    assert.are.equal(2, status, out)
    assert.matches("unknown experiment 'no_such_experiment'", out)
    assert.is_nil(read(dir .. "/REPORT.md"))
  end)

  it("rejects an unwritable --out with exit code 2", function()
    local file = dir .. "/a-file"
    local f = assert(io.open(file, "w")); f:close()
    local status, out = cli(("run creation --tiny --out %s/sub"):format(file))
    assert.are.equal(2, status, out)
    assert.matches("cannot write to %-%-out", out)
  end)

  it("rejects bad options, bad files and bad results with exit code 2", function()
    local status, out = cli("run --fast")
    assert.are.equal(2, status, out); assert.matches("unknown option '%-%-fast'", out)
    status, out = cli("frobnicate")
    assert.are.equal(2, status, out); assert.matches("unknown command", out)
    status, out = cli("run " .. dir .. "/missing.lua")
    assert.are.equal(2, status, out); assert.matches("cannot load experiment file", out)
    local bad = dir .. "/bad.lua"
    local f = assert(io.open(bad, "w")); f:write("return { name = 'x' }"); f:close()
    status, out = cli("run " .. bad)
    assert.are.equal(2, status, out); assert.matches("not an experiment: missing run", out)
    local js = dir .. "/r.json"
    f = assert(io.open(js, "w")); f:write("{\"format\": 1"); f:close()
    status, out = cli("report " .. js)
    assert.are.equal(2, status, out); assert.matches("invalid JSON", out)
  end)
end)
