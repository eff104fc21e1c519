-- cpu: a CPU-bound pure-Lua kernel and a parallel fill of a shared array,
-- split over 1..2x cores workers, threads versus processes.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"
local format = require "procthread.lab.format"
local fmt, cell = format.value, format.cell
local stats = require "procthread.lab.stats"

local E = {
  name = "cpu",
  title = "speedup of CPU-bound work split over workers",
  aspect = claims.by_name.cpu.aspect,
  claim = claims.by_name.cpu,
  params = {
    -- target_s: the serial kernel run is calibrated to take about this long
    full = { target_s = 1.0, fill_n = 4000000, n = 5, warmup = 1 },
    quick = { target_s = 0.15, fill_n = 500000, n = 3, warmup = 1, sparse = true },
    tiny = { target_s = 0.02, fill_n = 20000, n = 1, warmup = 0, max_workers = 2 },
  },
  -- a kind "uses the cores" when its speedup with C workers on C cores
  -- reaches 1 + SHARE * (C - 1): at least half of every extra core
  SHARE = 0.5,
  -- below this share of the cores' CPU time the workers were starved by
  -- other load, and the test is not fair
  OBTAINED = 0.75,
}

E.rule = ("With C cores and T(kind, w) the median time of the kernel split over w workers (first spawn to last join), " ..
  "scale(kind) = T(kind, 1) / T(kind, C). A kind uses the cores when scale >= 1 + %g*(C-1) (1.5 on 2 cores) outside the " ..
  "noise: the p10 – p90 of T(kind, 1) lies wholly above that factor times the p10 – p90 of T(kind, C); it does not when " ..
  "wholly below. Holds: both kinds do; holds only for one kind: the other does not although its workers got their CPU time; " ..
  "contradicted: neither does. Within noise: a kind's scaling is within noise (measured, but the spreads overlap the mark). Not measured: one core, or a kind fell short while its C workers got less than " ..
  "%g*C cores of CPU time, or its CPU time is unknown (user+sys of the workers / wall time: the machine was busy with other work). The speedup " ..
  "over the parent running the kernel alone, and the array fill, are reported beside it."):format(E.SHARE, E.OBTAINED)

-- the kernel: integer-valued arithmetic, so partial sums add up exactly
local function kernel(a, b)
  local x = 0
  for i = a, b do
    x = x + (i % 7) * 0.5 + (i % 3)
  end
  return x
end

local function fill_worker(arr, a, b)
  for i = a, b do arr[i] = i * 0.5 end
  return b - a + 1
end

local function worker_counts(cores, max)
  local list, top = {}, max or 2 * cores
  if top <= 8 then
    for w = 1, top do list[#list + 1] = w end
  else
    -- powers of two, plus the core count (the verdict's point) and the top
    local set, w = { [cores] = true, [top] = true }, 1
    while w < top do set[w] = true; w = w * 2 end
    for k in pairs(set) do if k <= top then list[#list + 1] = k end end
    table.sort(list)
  end
  return list
end
E.worker_counts = worker_counts

local function split(total, w, k)
  local per = math.floor(total / w)
  local a = (k - 1) * per + 1
  local b = (k == w) and total or k * per
  return a, b
end

function E.run(ctx)
  local pt, p = ctx.pt, ctx.params
  local cores = pt.cpu_count()
  ctx:set("cores", cores)
  -- calibrate the kernel so the serial run takes about target_s
  local iters = 100000
  while true do
    local t0 = pt.now(); kernel(1, iters); local dt = pt.now() - t0
    if dt >= p.target_s / 4 or iters >= 2e9 then
      iters = math.max(1000, math.floor(iters * p.target_s / math.max(dt, 1e-6)))
      break
    end
    iters = iters * 4
  end
  ctx:set("kernel_iters", iters)
  local expect = kernel(1, iters)
  local counts = worker_counts(cores, p.max_workers)
  if p.sparse then
    -- quick mode: 1, the cores, twice the cores
    local set, list = {}, {}
    for _, w in ipairs({ 1, cores, 2 * cores }) do
      if not set[w] and (not p.max_workers or w <= p.max_workers) then set[w] = true; list[#list + 1] = w end
    end
    counts = list
  end
  ctx:set("workers", counts)

  ctx:time("kernel/serial", { kind = "serial" }, { n = p.n, warmup = p.warmup, label = "kernel, serial" }, function()
    return kernel(1, iters) == expect or nil, "wrong result"
  end)
  for _, w in ipairs(counts) do
    for _, kind in ipairs({ "process", "thread" }) do
      ctx:time(("kernel/%s/%d"):format(kind, w), { kind = kind, workers = w },
        { n = p.n, warmup = p.warmup, label = ("kernel, %d %s%s"):format(w, kind, w > 1 and (kind == "process" and "es" or "s") or ""), stop_after_failures = 2 },
        function()
          local ws = {}
          local t_start = pt.now()
          for k = 1, w do
            local a, b = split(iters, w, k)
            local ok, wk = pcall(ctx.spawn, ctx, kind, kernel, a, b)
            if not ok then return nil, "spawn: " .. tostring(wk) end
            ws[k] = wk
          end
          local sum, cpu = 0, 0
          for k = 1, w do
            local ok, r = ctx:join(ws[k], 60)
            if ok ~= true then return nil, r end
            sum = sum + r
            local oki, inf = pcall(ws[k].info, ws[k])
            if oki and type(inf) == "table" and inf.cpu_user then cpu = cpu + inf.cpu_user + (inf.cpu_sys or 0) end
          end
          if sum ~= expect then return nil, "wrong sum" end
          -- how many cores' worth of CPU time the workers obtained
          if cpu > 0 then ctx:add(("obtained/%s/%d"):format(kind, w), { kind = kind, workers = w }, cpu / (pt.now() - t_start), "cores") end
          return true
        end)
    end
  end

  -- parallel fill of one shared array
  local n = p.fill_n
  local oka, arr = pcall(pt.array, n, "shared")
  if not oka then
    for _, kind in ipairs({ "serial", "process", "thread" }) do
      ctx:fail("fill/" .. kind .. (kind ~= "serial" and "/1" or ""), { kind = kind }, "pt.array(n, 'shared'): " .. tostring(arr))
    end
    return
  end
  local function check()
    local step = math.max(1, math.floor(n / 1000))
    for i = 1, n, step do if arr[i] ~= i * 0.5 then return false end end
    return arr[n] == n * 0.5
  end
  local function clear() for i = 1, n, math.max(1, math.floor(n / 1000)) do arr[i] = 0 end; arr[n] = 0 end
  ctx:time("fill/serial", { kind = "serial" }, { n = p.n, warmup = p.warmup, label = "fill, serial" }, function()
    clear()
    fill_worker(arr, 1, n)
    return check() or nil, "array not filled"
  end)
  for _, w in ipairs(counts) do
    for _, kind in ipairs({ "process", "thread" }) do
      ctx:time(("fill/%s/%d"):format(kind, w), { kind = kind, workers = w },
        { n = p.n, warmup = p.warmup, label = ("fill, %d %s"):format(w, kind), stop_after_failures = 2 },
        function()
          clear()
          local ws = {}
          for k = 1, w do
            local a, b = split(n, w, k)
            local ok, wk = pcall(ctx.spawn, ctx, kind, fill_worker, arr, a, b)
            if not ok then return nil, "spawn: " .. tostring(wk) end
            ws[k] = wk
          end
          for k = 1, w do
            local ok, r = ctx:join(ws[k], 60)
            if ok ~= true then return nil, r end
          end
          return check() or nil, "array not filled"
        end)
    end
  end
end

-- speedup of `what` ("kernel" | "fill") for kind at w workers
local function speedup(results, what, kind, w)
  local base = util.summary(results, what .. "/serial")
  local s = util.summary(results, ("%s/%s/%d"):format(what, kind, w))
  if not base.median or not s.median or s.median <= 0 then return nil end
  return base.median / s.median, s
end
E.speedup = speedup

-- Workers of `kind` at w starved: they got less than OBTAINED of the
-- cores they could use (min(w, C)); the CPU time they got, in cores.
local function starved(results, kind, w, C)
  local got = util.summary(results, ("obtained/%s/%d"):format(kind, w)).median
  return got ~= nil and got < E.OBTAINED * math.min(w, C or w), got
end
E.starved = starved

-- The best speedup over the worker counts whose workers were not starved.
local function best(results, what, kind, C)
  local bw, bs
  for _, w in ipairs(results.data.workers or {}) do
    local s = speedup(results, what, kind, w)
    if s and not starved(results, kind, w, C) and (not bs or s > bs) then bw, bs = w, s end
  end
  return bw, bs
end

function E.verdict(results)
  local C = results.data.cores
  if not C then return { verdict = "not measured", condition = "the experiment did not run" } end
  local v = {}
  local need = 1 + E.SHARE * (C - 1)
  local base = util.summary(results, "kernel/serial").median
  local m = {}
  for _, kind in ipairs({ "process", "thread" }) do
    local s1 = util.summary(results, ("kernel/%s/1"):format(kind))
    local sc = util.summary(results, ("kernel/%s/%d"):format(kind, C))
    local one, atc = s1.median, sc.median
    local got = util.summary(results, ("obtained/%s/%d"):format(kind, C)).median
    local x = { got = got, state = stats.versus(s1, sc, need) }
    if one and atc and atc > 0 then x.scale = one / atc end
    if base and atc and atc > 0 then x.net = base / atc end
    if base and one and one > 0 then x.single = base / one end
    x.bw, x.bs = best(results, "kernel", kind, C)
    local fw, fs = best(results, "fill", kind, C)
    m[kind] = x
    if x.scale then
      v[kind] = ("%.2f× from 1 to %d workers on %d cores%s; %.2f× the serial speed"):format(
        x.scale, C, C, got and (" (they got %.2f cores of CPU time)"):format(got) or "", x.net or 0)
      if fs then v[kind] = v[kind] .. ("; array fill best %.2f× at %d"):format(fs, fw) end
    end
  end
  local P = { process = "processes", thread = "threads" }
  if C < 2 then
    v.verdict = "not measured"; v.condition = "one core: nothing to run in parallel"
    return v
  end
  for _, kind in ipairs({ "process", "thread" }) do
    if not m[kind].scale then
      v.verdict = "not measured"
      v.condition = ("the kernel was not measured with 1 and %d %s"):format(C, P[kind])
      return v
    end
  end
  local uses, short, noisy = {}, {}, {}
  for _, kind in ipairs({ "process", "thread" }) do
    local x = m[kind]
    uses[kind] = x.state == "above"
    -- a kind that did not scale because the machine did not give its
    -- workers the cores (other load) says nothing about the claim
    if not uses[kind] and (not x.got or x.got < E.OBTAINED * C) then short[#short + 1] = kind
    elseif x.state == "within noise" then noisy[#noisy + 1] = kind end
  end
  local function overhead(kind)
    local x = m[kind]
    if x.single and x.single < 0.8 then
      return (" (but one %s runs the kernel at %.2f× the parent's speed, so %d of them reach only %.2f× the serial speed)"):format(
        kind, x.single, C, x.net)
    end
    return ""
  end
  if #short > 0 then
    v.verdict = "not measured"
    local parts = {}
    local unknown = false
    for _, kind in ipairs(short) do
      if m[kind].got then
        parts[#parts + 1] = ("%d %s got %.2f cores of CPU time"):format(C, P[kind], m[kind].got)
      else
        unknown = true
        parts[#parts + 1] = ("the CPU time of the %s was not recorded"):format(P[kind])
      end
    end
    v.condition = unknown
      and ("%s fell short of %.2f× and %s, so a busy machine cannot be ruled out"):format(
        table.concat(short, " and "), need, table.concat(parts, "; "))
      or ("the machine was busy: %s, under the %.2f that a fair test needs"):format(table.concat(parts, "; "), E.OBTAINED * C)
    v.reading = ("The workers could not be given the %d cores (%s), so the scaling measured here (processes %.2f×, threads %.2f×) reflects the other load on the machine, not the kinds of worker. Run the lab again on an idle machine."):format(
      C, table.concat(parts, "; "), m.process.scale, m.thread.scale)
    return v
  end
  if #noisy > 0 then
    local parts = {}
    for _, kind in ipairs(noisy) do parts[#parts + 1] = ("%s %.2f×"):format(P[kind], m[kind].scale) end
    v.verdict = "within noise"
    v.condition = ("the scaling from 1 to %d workers (%s) is too close to %.2f× for the spread of the samples to tell"):format(
      C, table.concat(parts, ", "), need)
    v.reading = ("From 1 to %d workers on %d cores the kernel ran %.2f× faster with processes and %.2f× with threads, but the p10 – p90 of the timings overlap the %.2f× mark, so this run decides nothing; more samples or a quieter machine would."):format(
      C, C, m.process.scale, m.thread.scale, need)
    return v
  end
  if uses.process and uses.thread then
    v.verdict = "holds"
    v.condition = ("both kinds run Lua on the %d cores at once: %.2f× (processes) and %.2f× (threads) from 1 to %d workers%s%s"):format(
      C, m.process.scale, m.thread.scale, C, overhead("process"), overhead("thread"))
  elseif uses.process or uses.thread then
    local good, bad = uses.process and "process" or "thread", uses.process and "thread" or "process"
    v.verdict = "conditional"
    v.condition = ("the workers are %s: %s scaled only %.2f× from 1 to %d workers on %d cores although they got %.2f cores of CPU time (%.2f× counts as using the cores)"):format(
      P[good], P[bad], m[bad].scale, C, C, m[bad].got or 0, need)
  else
    v.verdict = "contradicted"
    v.condition = ("neither kind scaled %.2f× from 1 to %d workers on %d cores (processes %.2f×, threads %.2f×) although they got the CPU time"):format(
      need, C, C, m.process.scale, m.thread.scale)
  end
  v.reading = ("From 1 to %d workers on %d cores the pure-Lua kernel ran %.2f× faster with processes and %.2f× with threads; against the parent running it alone that is %.2f× and %.2f×. %s"):format(
    C, C, m.process.scale, m.thread.scale, m.process.net or 0, m.thread.net or 0,
    (m.thread.single and m.thread.single < 0.8)
      and ("A single thread worker ran the kernel at only %.2f× the parent's speed (a process worker at %.2f×): the cost is per thread, not a lack of parallelism."):format(m.thread.single, m.process.single or 0)
      or ("The best speedups were at %s process and %s thread workers."):format(tostring(m.process.bw or "?"), tostring(m.thread.bw or "?")))
  local marked = {}
  for _, kind in ipairs({ "process", "thread" }) do
    for _, w in ipairs(results.data.workers or {}) do
      if starved(results, kind, w, C) then marked[#marked + 1] = ("%d %s"):format(w, P[kind]) end
    end
  end
  if #marked > 0 then
    v.reading = v.reading .. (" The rows with starved workers (%s: they got less than %d %% of the cores they could use) are marked and say nothing about the kinds of worker."):format(
      table.concat(marked, ", "), math.floor(E.OBTAINED * 100))
  end
  return v
end

function E.table(results)
  local C = results.data.cores or 1
  local base = util.summary(results, "kernel/serial")
  local fbase = util.summary(results, "fill/serial")
  local rows = { { "serial, in the parent", cell(base.median, "s"), "(same)",
                   cell(fbase.median, "s"), "(same)" } }
  local function f(what, kind, w)
    local s, sum = speedup(results, what, kind, w)
    if not s then return "—" end
    local hungry, got = starved(results, kind, w, C)
    if what ~= "kernel" then got, hungry = nil, false end
    return ("%.2f× (%s%s)%s"):format(s, fmt(sum.median, "s"), got and (", got %.2f cores"):format(got) or "",
      hungry and " **starved**" or "")
  end
  for _, w in ipairs(results.data.workers or {}) do
    rows[#rows + 1] = { ("%d worker%s"):format(w, w > 1 and "s" or ""), f("kernel", "process", w), f("kernel", "thread", w),
                        f("fill", "process", w), f("fill", "thread", w) }
  end
  return { caption = ("Speedup over the serial run in the parent (median time; CPU time the workers got, in cores; **starved**: less than %d %% of the cores they could use, so the row says nothing about the kind of worker):"):format(math.floor(E.OBTAINED * 100)),
           header = { "workers", "Lua kernel: processes", "Lua kernel: threads", "array fill: processes", "array fill: threads" },
           rows = rows }
end

function E.charts(results)
  local series = {}
  local C = results.data.cores or 1
  local colors = { process = "#1f77b4", thread = "#d62728" }
  for _, what in ipairs({ "kernel", "fill" }) do
    for _, kind in ipairs({ "process", "thread" }) do
      local pts = {}
      for _, w in ipairs(results.data.workers or {}) do
        local s = speedup(results, what, kind, w)
        if s then pts[#pts + 1] = { x = w, y = s, hollow = what == "kernel" and starved(results, kind, w, C) or nil } end
      end
      series[#series + 1] = { name = ("%s, %s"):format(what == "kernel" and "Lua kernel" or "array fill", kind == "process" and "processes" or "threads"),
                              points = pts, color = colors[kind], dash = what == "fill" }
    end
  end
  local ideal = {}
  for _, w in ipairs(results.data.workers or {}) do ideal[#ideal + 1] = { x = w, y = math.min(w, C) } end
  series[#series + 1] = { name = ("ideal (%d cores)"):format(C), points = ideal, color = "#999999", dash = true, no_markers = true }
  return { {
    file = "cpu.svg",
    title = "Speedup against worker count",
    subtitle = ("serial time / time split over w workers (spawn to last join); %d cores"):format(C),
    x = { label = "workers", min = 0 },
    y = { label = "speedup over serial (×)", unit = "x", min = 0 },
    series = series,
    note = ("hollow: starved (< %d %% of the cores)"):format(math.floor(E.OBTAINED * 100)),
  } }
end

return E
