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
    -- target_s: the serial kernel run is calibrated to take about this
    -- long; rounds: samples per configuration, taken in rounds over all of
    -- them; min_kept: the fewest samples that were not starved a
    -- configuration the verdict rests on needs
    full = { target_s = 0.35, fill_n = 1500000, rounds = 12, warmup = 1, min_kept = 5 },
    quick = { target_s = 0.15, fill_n = 500000, rounds = 4, warmup = 1, min_kept = 3, sparse = true },
    tiny = { target_s = 0.02, fill_n = 20000, rounds = 2, warmup = 0, min_kept = 1, max_workers = 2 },
  },
  -- a kind "uses the cores" when its speedup with C workers on C cores
  -- reaches 1 + SHARE * (C - 1): at least half of every extra core
  SHARE = 0.5,
  -- A sample is starved (the machine did not give its workers what a fair
  -- test needs; it is shown, and left out of the verdict) when steal took
  -- more than STEAL of the time of the cores it used, or its workers got
  -- less than OBTAINED of those cores in CPU time, or their work per
  -- CPU-second fell below THROUGHPUT times the 1-worker rate (two vCPUs
  -- that are SMT siblings, or a host that runs something else on the
  -- sibling, give the CPU time but not the work).
  -- Too little CPU time starves a sample only when other work took it: when
  -- at least IDLE of the CPU time the workers missed sat idle, they did not
  -- want it (a kind that cannot use the cores), and the sample counts.
  STEAL = 0.1,
  -- /proc/stat counts in ticks of TICK seconds, and each line of a reading
  -- truncates: a difference of one tick (a tick a CPU when the sample sums
  -- the lines of the CPUs the lab may use: its `tick`) may be a few
  -- nanoseconds of steal, so a sample's steal counts only beyond that
  TICK = 0.01,
  OBTAINED = 0.75,
  IDLE = 0.5,
  THROUGHPUT = 0.75,
  MIN_KEPT = 5,
}

E.rule = ("The samples are taken in rounds, each over every configuration (serial, 1 .. 2C workers of both kinds) in turn, " ..
  "the order reversed every other round. With C the CPUs the lab may run on (its affinity) and T(kind, w) the time of the kernel split over w workers (first " ..
  "spawn to last join), a sample is starved when steal (beyond the one-tick resolution of /proc/stat) took more than %g %% of the time of the cores it used (min(w, C)), " ..
  "or its workers' CPU time (user+sys) over T was less than %g*min(w, C) cores while other work kept the machine busy " ..
  "(idle cores do not starve a sample: workers that leave them idle cannot use them), or their work per CPU-second was below %gx " ..
  "the median rate of the fair 1-worker samples of that kind (for 1 worker: below %gx the rate of the serial run; all rates " ..
  "against the serial run of the same round, or the median of the fair ones when that one was starved; the serial run's own " ..
  "against the calibration's); starved " ..
  "samples are shown and left out. scale(kind) = T(kind, 1) / T(kind, C) over the samples that are left. A kind uses the " ..
  "cores when scale >= 1 + %g*(C-1) (1.5 on 2 cores) outside the noise: the p10 – p90 of T(kind, 1) lies wholly above " ..
  "that factor times the p10 – p90 of T(kind, C); it does not when wholly below. Holds: both kinds do; holds only for one " ..
  "kind: the other does not; contradicted: neither does. Within noise: a kind's spreads overlap the mark. Not measured: " ..
  "one CPU, or a CPU quota (cgroup) of fewer cores than C, or fewer than min_kept samples of the serial run or of 1 or of " ..
  "C workers of a kind are left, or a kind scales beyond C outside the noise (more than the cores can give: the 1-worker " ..
  "samples were slowed by something the lab did not see). The speedup over the parent running the kernel alone, and the " ..
  "array fill's over 1 worker of its kind, are reported beside it."):format(100 * E.STEAL, E.OBTAINED, E.THROUGHPUT, E.THROUGHPUT, E.SHARE)

-- the kernel: integer-valued arithmetic, so partial sums add up exactly
local function kernel(a, b)
  local x = 0
  for i = a, b do
    x = x + (i % 7) * 0.5 + (i % 3)
  end
  return x
end

local function fill_worker(a, b, arr)
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

local P = { process = "processes", thread = "threads" }
local function workers_text(w, kind)
  return ("%d %s"):format(w, w == 1 and kind or P[kind])
end

-- fn(a, b, arg) split over w workers of `kind` (1 .. total in slices):
-- true, the sum of what they returned, their CPU time (user + sys, nil
-- when a worker cannot say) | nil, reason.
local function over(ctx, kind, w, total, fn, arg)
  local ws = {}
  for k = 1, w do
    local a, b = split(total, w, k)
    local ok, wk = pcall(ctx.spawn, ctx, kind, fn, a, b, arg)
    if not ok then return nil, "spawn: " .. tostring(wk) end
    ws[k] = wk
  end
  local sum, cpu = 0, 0
  for k = 1, w do
    local ok, r = ctx:join(ws[k], 60)
    if ok ~= true then return nil, r end
    sum = sum + r
    local oki, inf = pcall(ws[k].info, ws[k])
    cpu = cpu and oki and type(inf) == "table" and inf.cpu_user and cpu + inf.cpu_user + (inf.cpu_sys or 0) or nil
  end
  return true, sum, cpu
end

-- One sample of configuration c in round r (r < 1: a warm-up, not
-- recorded): its time in series c.key, and for the kernel, beside it in
-- data.samples[c.key], what the machine gave it: the CPU time its workers
-- got, the steal over it and the busy time of the CPUs in `cpus` (the
-- ones the lab may run on; seconds, summed over them) with the
-- resolution of those two (tick), the round and when it started (`at`,
-- seconds into the experiment).
local function take(ctx, c, r, rounds, started, cpus)
  local rec, m0, m1
  local label = r >= 1 and ("%s, round %d of %d"):format(c.label, r, rounds) or c.label .. ", warm-up"
  ctx:sample(c.key, c.meta, { n = r >= 1 and 1 or 0, warmup = r >= 1 and 0 or 1, unit = "s", label = label }, function()
    m0 = util.machine_cpu(cpus)
    local t0 = ctx.pt.now()
    local ok, err, cpu = c.run()
    local t1 = ctx.pt.now()
    m1 = util.machine_cpu(cpus)
    if not ok then return nil, err end
    rec = { round = r, at = t0 - started, t = t1 - t0, cpu = cpu }
    return rec.t
  end)
  if rec and r >= 1 and c.record then
    if m0 and m1 then rec.steal, rec.busy, rec.tick = m1.steal - m0.steal, m1.busy - m0.busy, m1.tick end
    local all = ctx.results.data.samples
    all[c.key] = all[c.key] or {}
    table.insert(all[c.key], rec)
  end
end

function E.run(ctx)
  local pt, p = ctx.pt, ctx.params
  local cores = pt.cpu_count()
  ctx:set("cores", cores)
  ctx:set("quota", util.cpu_quota())
  -- calibrate the kernel so the serial run takes about target_s: grow it
  -- to a quarter of that, then scale by the fastest of three runs (one
  -- run that the machine stalled would make every sample too short)
  local iters = 100000
  local function run_time() local t0 = pt.now(); kernel(1, iters); return pt.now() - t0 end
  while run_time() < p.target_s / 4 and iters < 2e9 do iters = iters * 4 end
  local dt = math.min(run_time(), run_time(), run_time())
  local sized = iters
  iters = math.max(1000, math.floor(iters * p.target_s / math.max(dt, 1e-6)))
  ctx:set("kernel_iters", iters)
  -- what the serial run should take by the calibration: the yardstick of
  -- its own work per CPU-second
  ctx:set("calibrated_s", dt * iters / sized)
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
  ctx:set("samples", {})

  -- the configurations, in the order of a round: serial, then each worker
  -- count with both kinds side by side; the kernel, then the fill
  local list = {}
  local function add(key, meta, label, run, record)
    list[#list + 1] = { key = key, meta = meta, label = label, run = run, record = record }
  end
  add("kernel/serial", { kind = "serial" }, "kernel, serial", function()
    local c0 = os.clock()
    if kernel(1, iters) ~= expect then return nil, "wrong result" end
    return true, nil, os.clock() - c0
  end, true)
  for _, w in ipairs(counts) do
    for _, kind in ipairs({ "process", "thread" }) do
      add(("kernel/%s/%d"):format(kind, w), { kind = kind, workers = w }, "kernel, " .. workers_text(w, kind), function()
        local ok, sum, cpu = over(ctx, kind, w, iters, kernel)
        if not ok then return nil, sum end
        if sum ~= expect then return nil, "wrong sum" end
        return true, nil, cpu
      end, true)
    end
  end

  -- parallel fill of one shared array
  local n = p.fill_n
  local oka, arr = pcall(pt.array, n, "shared")
  if not oka then
    for _, kind in ipairs({ "serial", "process", "thread" }) do
      ctx:fail("fill/" .. kind .. (kind ~= "serial" and "/1" or ""), { kind = kind }, "pt.array(n, 'shared'): " .. tostring(arr))
    end
  else
    -- every sample clears a sparse set of elements, fills, and checks them
    local step = math.max(1, math.floor(n / 1000))
    local function clear() for i = 1, n, step do arr[i] = 0 end; arr[n] = 0 end
    local function filled()
      for i = 1, n, step do if arr[i] ~= i * 0.5 then return nil, "array not filled" end end
      if arr[n] ~= n * 0.5 then return nil, "array not filled" end
      return true
    end
    add("fill/serial", { kind = "serial" }, "fill, serial", function()
      clear()
      fill_worker(1, n, arr)
      return filled()
    end)
    for _, w in ipairs(counts) do
      for _, kind in ipairs({ "process", "thread" }) do
        add(("fill/%s/%d"):format(kind, w), { kind = kind, workers = w }, "fill, " .. workers_text(w, kind), function()
          clear()
          local ok, err = over(ctx, kind, w, n, fill_worker, arr)
          if not ok then return nil, err end
          return filled()
        end)
      end
    end
  end

  -- a configuration that failed twice and never gave a sample is dropped
  local rounds, started, cpus = p.rounds or p.n or 1, pt.now(), util.allowed_cpus()
  ctx:rounds(list, rounds, p.warmup, function(c, r)
    local s = ctx.results.series[c.key]
    if not (s and s.failed >= 2 and #s.samples == 0) then take(ctx, c, r, rounds, started, cpus) end
  end)
end

-- ---- what the machine gave each sample -----------------------------------------

local function times(list)
  local t = {}
  for _, x in ipairs(list) do if not x.starved then t[#t + 1] = x.t end end
  return t
end

local function field(list, name)
  local t = {}
  for _, x in ipairs(list) do t[#t + 1] = x[name] end
  return t
end

-- The kernel's samples of one configuration, each with what the machine
-- gave it: obtained (cores of CPU time: CPU time / T), rate (its work per
-- CPU-second against the serial run's of the same round: serial CPU time
-- / its CPU time), steal (share of the time of the `use` = min(w, C)
-- cores it used) and idle (cores' worth of the C that nothing used).
local function annotate(recs, use, C, serial_cpu, serial_median)
  local list = {}
  for _, s in ipairs(recs or {}) do
    local x = { t = s.t, round = s.round, cpu = s.cpu }
    if s.cpu and s.t > 0 then x.obtained = s.cpu / s.t end
    local base = serial_cpu[s.round] or serial_median
    if s.cpu and s.cpu > 0 and base then x.rate = base / s.cpu end
    if s.steal and s.t > 0 then x.steal = math.max(0, s.steal - (s.tick or E.TICK)) / (s.t * use) end
    if s.busy and s.t > 0 then x.idle = math.max(0, C - s.busy / s.t) end
    list[#list + 1] = x
  end
  return list
end

-- Why a sample is starved (nil: it is not): "cpu unknown", "steal", "cpu"
-- (too little CPU time, which other work took: workers that leave the
-- cores idle cannot use them, and that counts against their kind),
-- "throughput" (too little work per CPU-second against ref, the 1-worker
-- rate; nil for the serial run).
local function starved_by(x, use, ref)
  if not x.obtained then return "cpu unknown" end
  if x.steal and x.steal > E.STEAL then return "steal" end
  if x.obtained < E.OBTAINED * use and not (x.idle and x.idle >= E.IDLE * (use - x.obtained)) then return "cpu" end
  if ref and x.rate and x.rate < E.THROUGHPUT * ref then return "throughput" end
  return nil
end

-- A configuration: its samples, the summary of the times of those that
-- were not starved (t), and the count of starved ones by reason.
local function config(list, use, ref)
  local c = { all = list, n = #list, starved = 0, by = {} }
  for _, x in ipairs(list) do
    x.starved = starved_by(x, use, ref)
    if x.starved then c.starved = c.starved + 1; c.by[x.starved] = (c.by[x.starved] or 0) + 1 end
  end
  c.t = stats.summary(times(list))
  c.obtained = stats.median(field(list, "obtained"))
  c.rate = stats.median(field(list, "rate"))
  c.steal = stats.median(field(list, "steal"))
  c.max_steal = stats.quantile(field(list, "steal"), 1)
  return c
end

-- Every kernel sample of a results table, judged: a.serial, and
-- a[kind][w] (see config).  A serial sample's rate is its work per
-- CPU-second against the calibration's (none when the results do not
-- hold it).  Each worker sample's rate is measured against the serial
-- run of its own round when that one was not starved (else the median of
-- those that were not; none when every one was): a 1-worker sample is
-- held against that rate itself (1), a sample of more workers against the
-- median rate of the 1-worker samples of its kind that were not starved.
function E.analyse(results)
  local data = results.data or {}
  local C = data.cores or 1
  local recs = data.samples or {}
  -- the serial run's own work per CPU-second is held against the
  -- calibration's (when the results say what it was)
  local a = { C = C, serial = config(annotate(recs["kernel/serial"], 1, C, {}, data.calibrated_s), 1, data.calibrated_s and 1) }
  local serial_cpu, cpus = {}, {}
  for _, x in ipairs(a.serial.all) do
    if x.cpu and not x.starved then serial_cpu[x.round] = x.cpu; cpus[#cpus + 1] = x.cpu end
  end
  local med = stats.median(cpus)
  for _, kind in ipairs({ "process", "thread" }) do
    local one = config(annotate(recs[("kernel/%s/1"):format(kind)], 1, C, serial_cpu, med), 1, 1)
    local rates = {}
    for _, x in ipairs(one.all) do if not x.starved then rates[#rates + 1] = x.rate end end
    local ref = stats.median(rates) or 1
    a[kind] = {}
    for _, w in ipairs(data.workers or {}) do
      a[kind][w] = w == 1 and one
        or config(annotate(recs[("kernel/%s/%d"):format(kind, w)], math.min(w, C), C, serial_cpu, med), math.min(w, C), ref)
    end
  end
  return a
end

local REASONS = { "steal", "cpu", "throughput", "cpu unknown" }
local REASON_TEXT = {
  steal = ("by steal (over %d %% of the cores' time)"):format(100 * E.STEAL),
  cpu = ("by CPU time (under %g of the cores they could use, taken by other work)"):format(E.OBTAINED),
  throughput = ("by work per CPU-second (under %g× that of 1 worker, or of the serial run for 1 worker)"):format(E.THROUGHPUT),
  ["cpu unknown"] = "because their CPU time is not known",
}

local REASON_SHORT = { steal = "by steal", cpu = "by CPU time", throughput = "by work per CPU-second",
                       ["cpu unknown"] = "CPU time unknown" }

-- "3 by steal (...), 1 by CPU time (...)" for counts by reason (short:
-- without the thresholds).
local function reasons_text(by, short)
  local parts = {}
  for _, r in ipairs(REASONS) do
    if (by[r] or 0) > 0 then parts[#parts + 1] = ("%d %s"):format(by[r], (short and REASON_SHORT or REASON_TEXT)[r]) end
  end
  return table.concat(parts, ", ")
end

-- The speedup of the median of c's kept times over the serial median.
local function speedup_of(base, c)
  if not (base and c and c.t.median and c.t.median > 0) then return nil end
  return base / c.t.median
end

-- Speedup of the fill for kind at w over 1 worker of that kind: the
-- parent's own fill goes another way (its fill is slower than one
-- worker's), so it is no yardstick for the workers.
local function fill_speedup(results, kind, w)
  local base = util.summary(results, ("fill/%s/1"):format(kind)).median
  local s = util.summary(results, ("fill/%s/%d"):format(kind, w))
  if not base or not s.median or s.median <= 0 then return nil end
  return base / s.median, s
end

-- The best speedup of `what` ("kernel" | "fill") over the worker counts.
local function best(results, a, what, kind)
  local bw, bs
  for _, w in ipairs(results.data.workers or {}) do
    local s = what == "kernel" and speedup_of(a.serial.t.median, a[kind][w]) or what == "fill" and fill_speedup(results, kind, w)
    if s and (not bs or s > bs) then bw, bs = w, s end
  end
  return bw, bs
end

-- The configurations the verdict rests on, as { label, config }: the
-- serial run (the yardstick of the 1-worker samples' work per
-- CPU-second), and 1 and C workers of both kinds.
local function verdict_configs(a, C)
  local list = { { "serial", a.serial } }
  for _, kind in ipairs({ "process", "thread" }) do
    for _, w in ipairs({ 1, C }) do list[#list + 1] = { workers_text(w, kind), a[kind][w] } end
  end
  return list
end

-- Their samples: how many, how many were starved, and why (counts by
-- reason).
local function verdict_samples(a, C)
  local n, k, by = 0, 0, {}
  for _, lc in ipairs(verdict_configs(a, C)) do
    local c = lc[2]
    n, k = n + c.n, k + c.starved
    for r, m in pairs(c.by) do by[r] = (by[r] or 0) + m end
  end
  return n, k, by
end

-- What the verdict left out, in a sentence.
local function excluded_text(a, C)
  local n, k, by = verdict_samples(a, C)
  if k == 0 then return ("None of the %d samples of the serial run and of 1 and %d workers was starved"):format(n, C) end
  return ("Of the %d samples of the serial run and of 1 and %d workers, the verdict left out %d as starved: %s"):format(
    n, C, k, reasons_text(by))
end

-- The configurations the verdict needs that have fewer than `enough`
-- samples left: "2 threads 3 of 12".
local function too_few(a, C, enough)
  local parts = {}
  for _, lc in ipairs(verdict_configs(a, C)) do
    local c = lc[2]
    if c.t.n < enough then parts[#parts + 1] = ("%s %d of %d"):format(lc[1], c.t.n, c.n) end
  end
  return parts
end

local function not_measured(condition, reading)
  return { verdict = "not measured", condition = condition, reading = reading }
end

-- "1.90× faster with processes and 1.80× with threads": m[kind][field]
-- of each kind that has it, formatted with first (the first figure) or
-- rest and the kind's name in `names`; nil when neither has it.
local function per_kind(m, field, first, rest, names)
  local parts = {}
  for _, kind in ipairs({ "process", "thread" }) do
    local x = m[kind][field]
    if x then parts[#parts + 1] = (#parts == 0 and first or rest):format(x, (names or P)[kind]) end
  end
  return #parts > 0 and table.concat(parts, " and ") or nil
end

-- The reading: every clause whose figures are there, the others left out.
-- m[kind]: scale, net (C workers' speedup over the serial run), single
-- (1 worker's), bw (the worker count of the best speedup).
function E.reading(m, C, excluded)
  local out = {}
  local function add(text, ...) out[#out + 1] = text:format(...) end
  local scale = per_kind(m, "scale", "%.2f× faster with %s", "%.2f× with %s")
  if scale then
    add("From 1 to %d workers on %d cores the pure-Lua kernel ran %s (medians of the samples that were not starved).", C, C, scale)
  end
  local net = per_kind(m, "net", "%.2f× with %s", "%.2f× with %s")
  if net then add("Against the parent running it alone, %d workers reached %s.", C, net) end
  for _, kind in ipairs({ "process", "thread" }) do
    local x = m[kind]
    if x.single and x.single < 0.8 then
      add("One %s ran the kernel at %.2f× the parent's speed%s: the cost is per %s, not a lack of parallelism.", kind, x.single,
        x.net and (", so %d of them reached only %.2f× the serial speed"):format(C, x.net) or "", kind)
    end
  end
  local noisy = {}
  for _, kind in ipairs({ "process", "thread" }) do
    if m[kind].state == "within noise" then noisy[#noisy + 1] = P[kind] end
  end
  if #noisy > 0 then
    add("For %s the p10 – p90 of the timings overlap the %.2f× mark.", table.concat(noisy, " and "), 1 + E.SHARE * (C - 1))
  end
  local bw = per_kind(m, "bw", "%d %s", "%d %s", { process = "process", thread = "thread" })
  if bw then add("The best speedups were at %s workers.", bw) end
  add("%s.", excluded)
  return table.concat(out, " ")
end

-- The scaling of each kind from 1 to C workers over the fair samples,
-- its speedups over the serial run, and its cell of the claims table.
local function measure(results, a, C, need)
  local base = a.serial.t.median
  local m, v = {}, {}
  for _, kind in ipairs({ "process", "thread" }) do
    local one, atc = a[kind][1], a[kind][C]
    local x = { state = stats.versus(one.t, atc.t, need), starved = one.starved + atc.starved, n = one.n + atc.n,
                super = stats.versus(one.t, atc.t, C) == "above" }
    if one.t.median and atc.t.median and atc.t.median > 0 then x.scale = one.t.median / atc.t.median end
    x.net, x.single = speedup_of(base, atc), speedup_of(base, one)
    x.bw, x.bs = best(results, a, "kernel", kind)
    m[kind] = x
    v[kind] = x.scale and ("%.2f× from 1 to %d workers on %d cores (%d of %d samples starved)"):format(x.scale, C, C, x.starved, x.n)
      or ("scaling not measured: %d of %d samples of 1 and %d workers starved"):format(x.starved, x.n, C)
    if x.net then v[kind] = v[kind] .. ("; %.2f× the serial speed"):format(x.net) end
    local fw, fs = best(results, a, "fill", kind)
    if fs then v[kind] = v[kind] .. ("; array fill best %.2f× over 1 worker at %d"):format(fs, fw) end
  end
  return m, v
end

-- The verdict and its condition from the measured kinds.  The condition
-- holds no measured number: the same machine gives the same words from
-- run to run (the figures are in the cells and the reading).
local function decide(m, C, need)
  local noisy, uses, super = {}, {}, {}
  for _, kind in ipairs({ "process", "thread" }) do
    uses[kind] = m[kind].state == "above"
    if m[kind].state == "within noise" then noisy[#noisy + 1] = P[kind] end
    if m[kind].super then super[#super + 1] = P[kind] end
  end
  if #super > 0 then
    -- more than C cores can give: the yardstick, not the workers, is off
    return "not measured", ("the scaling of %s from 1 to %d workers is above %d× outside the noise, more than %d cores can give: the 1-worker samples were slowed by something the lab did not see"):format(
      table.concat(super, " and "), C, C, C)
  end
  if #noisy > 0 then
    -- which kinds lie within the noise is itself noise (an idle machine
    -- gave both, both, threads in three runs): the reading names them
    return "within noise", ("the scaling from 1 to %d workers is too close to %.2f× for the spread of the samples to tell"):format(C, need)
  elseif uses.process and uses.thread then
    return "holds", ("both kinds run Lua on the %d cores at once: from 1 to %d workers each scales beyond %.2f× outside the noise"):format(C, C, need)
  elseif uses.process or uses.thread then
    local good, bad = uses.process and "process" or "thread", uses.process and "thread" or "process"
    return "conditional", ("the workers are %s: %s fall short of %.2f× from 1 to %d workers on %d cores outside the noise, on samples that got their cores"):format(
      P[good], P[bad], need, C, C)
  end
  return "contradicted", ("neither kind scales %.2f× from 1 to %d workers on %d cores outside the noise, on samples that got their cores"):format(need, C, C)
end

function E.verdict(results)
  local C, quota = results.data.cores, results.data.quota
  if not C then return not_measured("the experiment did not run") end
  if C < 2 then return not_measured("one core: nothing to run in parallel") end
  if quota and quota < C then
    return not_measured(("a CPU quota (cgroup cpu.max) gives the lab %.2f cores' worth of CPU time on the %d CPUs it may run on: workers beyond it are throttled, not run in parallel"):format(
      quota, C))
  end
  if not results.data.samples then
    return not_measured("the samples hold no record of the CPU time and steal they got (results of an older lab): run it again")
  end
  local a = E.analyse(results)
  for _, kind in ipairs({ "process", "thread" }) do
    if not (a[kind][1] and a[kind][C] and a[kind][1].n > 0 and a[kind][C].n > 0) then
      return not_measured(("the kernel was not measured with 1 and %d %s"):format(C, P[kind]))
    end
  end
  local need = 1 + E.SHARE * (C - 1)
  local m, v = measure(results, a, C, need)
  local excluded = excluded_text(a, C)
  local enough = math.max(1, (results.params or {}).min_kept or E.MIN_KEPT)
  local short = too_few(a, C, enough)
  if #short > 0 then
    local _, _, by = verdict_samples(a, C)
    v.verdict = "not measured"
    v.condition = ("too few samples that were not starved (%d needed): %s left; starved %s"):format(
      enough, table.concat(short, ", "), reasons_text(by, true))
    v.reading = ("The machine did not give the workers the %d cores often enough for a fair test, so what is left says nothing about the kinds of worker. %s. Run the lab again on an idle machine."):format(
      C, excluded)
    return v
  end
  v.verdict, v.condition = decide(m, C, need)
  v.reading = E.reading(m, C, excluded)
  return v
end

-- ---- table and chart ---------------------------------------------------------------

local function pct(x) return x and ("%.0f %%"):format(100 * x) or "?" end

function E.table(results)
  local a = E.analyse(results)
  local C = a.C
  local base = a.serial.t
  local fbase = util.summary(results, "fill/serial")
  local function starved_cell(c)
    return c.starved > 0 and (" **%d of %d starved**"):format(c.starved, c.n) or ""
  end
  local rows = { { "serial, in the parent", cell(base.median, "s") .. starved_cell(a.serial), "(same)",
                   cell(fbase.median, "s"), "(same)" } }
  local function kernel_cell(kind, w)
    local c = a[kind][w]
    local s = speedup_of(base.median, c)
    if not s then return c.n > 0 and ("—%s"):format(starved_cell(c)) or "—" end
    return ("%.2f× (%s)%s"):format(s, fmt(c.t.median, "s"), starved_cell(c))
  end
  local function fill_cell(kind, w)
    local s, sum = fill_speedup(results, kind, w)
    return s and ("%.2f× (%s)"):format(s, fmt(sum.median, "s")) or "—"
  end
  local given = {}
  for _, w in ipairs(results.data.workers or {}) do
    rows[#rows + 1] = { ("%d worker%s"):format(w, w > 1 and "s" or ""), kernel_cell("process", w), kernel_cell("thread", w),
                        fill_cell("process", w), fill_cell("thread", w) }
    for _, kind in ipairs({ "process", "thread" }) do
      local c = a[kind][w]
      given[#given + 1] = { workers_text(w, kind), ("%d of %d"):format(c.starved, c.n), c.starved > 0 and reasons_text(c.by, true) or "—",
        c.obtained and ("%.2f of %d"):format(c.obtained, math.min(w, C)) or "?", c.rate and ("%.2f×"):format(c.rate) or "?",
        ("%s (at most %s)"):format(pct(c.steal), pct(c.max_steal)) }
    end
  end
  return {
    { caption = "Kernel: speedup over the serial run in the parent (median time of the samples that were not starved; **starved**: the machine did not give those samples' workers what a fair test needs, see below; they are left out). Array fill: speedup over 1 worker of the same kind (the parent's own fill, in its row, is slower than one worker's, so it is no yardstick):",
      header = { "workers", "Lua kernel: processes", "Lua kernel: threads", "array fill: processes", "array fill: threads" },
      rows = rows },
    { caption = ("What the machine gave the kernel's samples (medians over all samples): cores of CPU time the workers got (user + sys over the time), their work per CPU-second against the serial run of the same round, and the steal over the sample as a share of the time of the cores it used. A sample is starved when steal took over %d %%, or the workers got under %g of the cores they could use, or their work per CPU-second fell under %g× the rate of 1 worker (for 1 worker: of the serial run):"):format(
        100 * E.STEAL, E.OBTAINED, E.THROUGHPUT),
      header = { "workers", "starved", "why", "cores got", "work per CPU-second", "steal" },
      rows = given },
  }
end

function E.charts(results)
  local a = E.analyse(results)
  local C = a.C
  local base = a.serial.t.median
  local series = {}
  local colors = { process = "#1f77b4", thread = "#d62728" }
  local hungry = {}
  for _, kind in ipairs({ "process", "thread" }) do
    local pts, lost = {}, {}
    for _, w in ipairs(results.data.workers or {}) do
      local c = a[kind][w]
      local s = speedup_of(base, c)
      if s then pts[#pts + 1] = { x = w, y = s, lo = base / c.t.p90, hi = base / c.t.p10 } end
      -- beside the median, processes to the left and threads to the right
      for _, x in ipairs(c.all) do
        if x.starved and base and x.t > 0 then
          lost[#lost + 1] = { x = w + (kind == "process" and -0.08 or 0.08), y = base / x.t, hollow = true }
        end
      end
    end
    series[#series + 1] = { name = "Lua kernel, " .. P[kind], points = pts, color = colors[kind] }
    if #lost > 0 then
      hungry[#hungry + 1] = { name = "starved samples, " .. P[kind], points = lost, color = colors[kind], line = false }
    end
  end
  for _, kind in ipairs({ "process", "thread" }) do
    local pts = {}
    for _, w in ipairs(results.data.workers or {}) do
      local s = fill_speedup(results, kind, w)
      if s then pts[#pts + 1] = { x = w, y = s } end
    end
    series[#series + 1] = { name = "array fill over 1 worker, " .. P[kind], points = pts, color = colors[kind], dash = true }
  end
  for _, s in ipairs(hungry) do series[#series + 1] = s end
  local ideal = {}
  local top
  for _, w in ipairs(results.data.workers or {}) do ideal[#ideal + 1] = { x = w, y = math.min(w, C) }; top = w end
  series[#series + 1] = { name = ("ideal (%d cores)"):format(C), points = ideal, color = "#999999", dash = true, no_markers = true }
  return { {
    file = "cpu.svg",
    title = "Speedup against worker count",
    subtitle = ("kernel: serial time / time split over w workers (spawn to last join); fill: 1 worker's time / w workers'; %d cores"):format(C),
    x = { label = "workers", min = 0, max = (top or 1) + 0.3, ticks = results.data.workers },
    y = { label = "speedup over serial (×)", unit = "x", min = 0 },
    series = series,
    note = "kernel: median, p10 – p90 of the fair samples; open: starved",
  } }
end

return E
