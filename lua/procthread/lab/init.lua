-- procthread.lab: the harness that loads experiments, runs them and keeps
-- their samples, and computes their verdicts.
--
-- The lab's modules depend downward only: the helpers (util, format,
-- stats, json, svg, claims) depend on no experiment and not on the harness;
-- the experiments on the helpers; this harness on both; the report
-- (report.lua) on the harness; the command line (main.lua) on all.
-- This module also offers every function of procthread.lab.util (an
-- experiment written against it, e.g. `lab.summary`, keeps working).
--
-- An experiment is a table (a module under procthread/lab/, or a user's file
-- returning one):
--
--   name     short name ("creation")
--   title    one line for the report (optional)
--   aspect   the claims-table row it answers ("creation overhead")
--   claim    { process = "high", thread = "low" }  (what the folklore says;
--            a built-in experiment takes both from procthread.lab.claims)
--   rule     how verdict() decides, in words (shown in the report)
--   params   { full = {...}, quick = {...}, tiny = {...} }  (tiny: specs)
--   run(ctx) measures, recording everything through ctx (see Ctx below)
--   verdict(results) -> { verdict = "holds" | "conditional" | "contradicted"
--                         | "within noise" | "not measured", condition = "...",
--                         process = "...", thread = "...", reading = "..." }
--   table(results)   -> { header = {...}, rows = {{...}, ...} } (optional)
--   charts(results)  -> list of chart specs for procthread.lab.svg (optional)
--
-- `results` is what run() recorded: { params, mode, series, data, machine }
-- where series[key] = { meta, unit, samples = {...}, failed, errors }.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"
local format = require "procthread.lab.format"

local M = {}
for name, fn in pairs(util) do M[name] = fn end

M.VERSION = "1"
M.FORMAT = "procthread-lab/1"

local unpack = unpack or table.unpack
local pack, read_file, searchpath = util.pack, util.read_file, util.searchpath

-- "within noise": measured, but the spreads overlap where the claim is
-- decided (a verdict of its own; "not measured" is for what could not be
-- measured)
M.VERDICTS = { holds = true, conditional = true, contradicted = true, ["within noise"] = true, ["not measured"] = true }

-- ---- machine facts ---------------------------------------------------------

local function loadavg()
  local s = read_file("/proc/loadavg")
  if not s then return nil end
  local a, b, c = s:match("^(%S+)%s+(%S+)%s+(%S+)")
  return { tonumber(a), tonumber(b), tonumber(c) }
end
M.loadavg = loadavg

-- CPU time (seconds) used so far by the whole machine and by this process
-- with its reaped children, from /proc (jiffies of 1/100 s); nil when
-- /proc cannot say.
function M.cpu_times()
  local all = util.machine_cpu()
  local me = (read_file("/proc/self/stat") or ""):match("%) (.*)")
  if not all or not me then return nil end
  local f, i = {}, 2     -- fields after the command name; utime is field 14
  for x in me:gmatch("%S+") do i = i + 1; f[i] = tonumber(x) end
  return { machine = all.busy, own = (f[14] + f[15] + f[16] + f[17]) / 100 }
end

-- Cores' worth of CPU that other work used between two cpu_times() over
-- `elapsed` seconds (never below 0), or nil.
function M.other_cores(a, b, elapsed)
  if not (a and b and elapsed and elapsed > 0) then return nil end
  return math.max(0, ((b.machine - a.machine) - (b.own - a.own)) / elapsed)
end

function M.machine(pt)
  local m = {}
  local cpuinfo = read_file("/proc/cpuinfo") or ""
  m.cpu_model = cpuinfo:match("model name%s*:%s*([^\n]+)") or cpuinfo:match("Hardware%s*:%s*([^\n]+)")
    or cpuinfo:match("uarch%s*:%s*([^\n]+)") or "unknown"
  local ok, n = pcall(function() return pt.cpu_count() end)
  m.cores = ok and n or nil
  local ostype = (read_file("/proc/sys/kernel/ostype") or ""):gsub("%s+$", "")
  local rel = (read_file("/proc/sys/kernel/osrelease") or ""):gsub("%s+$", "")
  m.kernel = (ostype ~= "" and ostype .. " " or "") .. (rel ~= "" and rel or "unknown")
  m.lua = _VERSION
  if type(jit) == "table" and jit.version then m.lua = jit.version .. " (" .. _VERSION .. ")" end
  m.procthread = pt and pt.version or nil
  local mem = read_file("/proc/meminfo") or ""
  local kib = tonumber(mem:match("MemTotal:%s*(%d+)"))
  if kib then m.mem_total_mib = math.floor(kib / 1024) end
  m.hostname = (read_file("/proc/sys/kernel/hostname") or ""):gsub("%s+$", "")
  m.date = os.date("!%Y-%m-%dT%H:%M:%SZ")
  m.loadavg_before = loadavg()
  return m
end

-- ---- progress on stderr ------------------------------------------------------

local Progress = {}
Progress.__index = Progress

-- tty: redraw one line in place (only once the experiment has run for a
-- second); otherwise quiet, except the one line per experiment (done()).
function M.progress(opts)
  opts = opts or {}
  local self = setmetatable({}, Progress)
  self.out = opts.out or io.stderr
  if opts.tty == nil then self.tty = util.is_tty(2) else self.tty = opts.tty end
  self.quiet = opts.quiet
  self.now = opts.now
  if not self.now then
    local ok, pt = pcall(require, "procthread")
    self.now = ok and pt.now or os.time
  end
  self.last = -1
  return self
end

-- Typical run time of each built-in experiment (seconds, measured on a
-- 2-core machine; cpu as when idle), for the estimate of the time left.
M.typical = {
  full = { memory = 9, communication = 8, isolation = 9, creation = 10, failure = 10, cpu = 40, backend = 25 },
  quick = { memory = 3, communication = 1, isolation = 2.5, creation = 1, failure = 2.5, cpu = 5.5, backend = 5.5 },
}

-- The whole run: `names` in order, in `mode`; start() of each experiment
-- then updates the estimate of what is left.
function Progress:plan(names, mode)
  self.plan_names, self.plan_t0 = names, self.now()
  self.typical = M.typical[mode] or M.typical.quick
end

-- "lab 1 min 05 s, about 40 s left" for the run as planned (with the
-- current experiment finished when `finished`), or nil.  The typical
-- times are scaled by how fast the finished experiments went.
function Progress:eta(finished)
  local names = self.plan_names
  if not names or #names < 2 then return nil end
  local t = self.now()
  local spent, current = t - self.plan_t0, finished and 0 or t - (self.t0 or t)
  local done_typ, cur_typ, rest_typ = 0, 0, 0
  for i, n in ipairs(names) do
    local typ = self.typical[n] or 5
    if i < self.index or (i == self.index and finished) then done_typ = done_typ + typ
    elseif i == self.index then cur_typ = typ
    else rest_typ = rest_typ + typ end
  end
  local speed = done_typ > 0 and (spent - current) / done_typ or 1
  local left = math.max(0, cur_typ * speed - current) + rest_typ * speed
  return ("lab %s, about %s left"):format(format.duration(spent), format.duration(left))
end

function Progress:start(name, i, n)
  self.name, self.index, self.count = name, i, n
  self.t0 = self.now()
  self.last = -1
  self.drawn = false
end

function Progress:update(what, i, n)
  if self.quiet or not self.tty then return end
  local t = self.now()
  local elapsed = t - (self.t0 or t)
  if elapsed < 1 or t - self.last < 0.1 then return end
  self.last = t
  local line = ("[%d/%d] %s: %s"):format(self.index or 1, self.count or 1, self.name or "?", what or "")
  if i and n then line = line .. (" %d/%d"):format(i, n) end
  line = line .. (" (%.1f s)"):format(elapsed)
  local eta = self:eta()
  if #line > 100 - (eta and #eta + 3 or 0) then line = line:sub(1, 97 - (eta and #eta + 3 or 0)) .. "..." end
  if eta then line = line .. " — " .. eta end
  self.out:write("\r\27[K" .. line)
  self.out:flush()
  self.drawn = true
end

function Progress:done(summary)
  if self.quiet then return end
  local elapsed = self.now() - (self.t0 or self.now())
  if self.tty and self.drawn then self.out:write("\r\27[K") end
  local eta = self.index and self.index < (self.count or 1) and self:eta(true)
  self.out:write(("[%d/%d] %s: %s (%.1f s%s)\n"):format(self.index or 1, self.count or 1,
    self.name or "?", summary or "done", elapsed, eta and "; " .. eta or ""))
  self.out:flush()
end

-- ---- the context handed to run(ctx) ----------------------------------------------

local Ctx = {}
Ctx.__index = Ctx

local function series_of(self, key, meta, unit)
  local s = self.results.series[key]
  if not s then
    s = { meta = meta or {}, unit = unit, samples = {}, failed = 0, errors = {} }
    self.results.series[key] = s
  end
  return s
end

-- Keep at most 5 distinct messages, with their counts.
local function note_error(s, err)
  err = tostring(err)
  if #err > 300 then err = err:sub(1, 300) .. "..." end
  s.failed = s.failed + 1
  for _, e in ipairs(s.errors) do
    if e.message == err then e.count = e.count + 1; return end
  end
  if #s.errors < 5 then s.errors[#s.errors + 1] = { message = err, count = 1 } end
end

-- Record one value (a number) in series `key`.
function Ctx:add(key, meta, value, unit)
  if type(value) ~= "number" then
    error(("ctx:add: series '%s': a sample must be a number, got %s"):format(tostring(key), type(value)), 2)
  end
  local s = series_of(self, key, meta, unit)
  s.samples[#s.samples + 1] = value
  return value
end

-- Record a failed sample with its reason.
function Ctx:fail(key, meta, err, unit)
  note_error(series_of(self, key, meta, unit), err)
end

-- Observation that is not a sample (a visibility matrix, a count...).
function Ctx:set(key, value) self.results.data[key] = value; return value end

-- Run fn `warmup` times unrecorded, then `n` times recorded.  fn returns
-- the value to record (a number), or nil/false and an error; an error it
-- raises is a failed sample too.  opts: n, warmup, unit, label,
-- stop_after_failures (stop when the first k samples all failed), budget
-- (seconds: stop recording once spent; the series notes `truncated`).
-- Returns the series.
function Ctx:sample(key, meta, opts, fn)
  local s = series_of(self, key, meta, opts.unit)
  local n, warmup = opts.n or 1, opts.warmup or 0
  local label = opts.label or key
  local now = self.pt.now
  local t0 = now()
  for i = 1, warmup + n do
    self:update(label, i, warmup + n)
    local r = pack(pcall(fn, i))
    if i > warmup then
      if r[1] and type(r[2]) == "number" then
        s.samples[#s.samples + 1] = r[2]
      elseif r[1] then
        note_error(s, r[3] or ("sample gave " .. tostring(r[2])))
      else
        note_error(s, r[2])
      end
    end
    if opts.stop_after_failures and s.failed >= opts.stop_after_failures and #s.samples == 0 then
      break
    end
    -- a time budget keeps a pathologically slow series from stalling the
    -- lab: stop once it is spent and something was recorded
    if opts.budget and i > warmup and i < warmup + n and now() - t0 > opts.budget then
      s.truncated = (i - warmup) .. " of " .. n
      break
    end
  end
  return s
end

-- Time fn (seconds, pt.now()).  fn returns true, or nil/false and a reason.
function Ctx:time(key, meta, opts, fn)
  local now = self.pt.now
  opts.unit = opts.unit or "s"
  return self:sample(key, meta, opts, function(i)
    local t0 = now()
    local ok, err = fn(i)
    local t1 = now()
    if not ok then return nil, err or "failed" end
    return t1 - t0
  end)
end

-- Take samples in rounds: `warmup` rounds, then `rounds` more, each
-- calling each(item, round) for every item of `list` in turn, in the
-- opposite order every other round, so that a slow period of the machine
-- falls on every item alike instead of on the ones measured during it.
-- round < 1 is a warm-up round (each() should not record it).
function Ctx:rounds(list, rounds, warmup, each)
  local n = #list
  for r = 1 - (warmup or 0), rounds do
    for i = 1, n do each(list[r % 2 == 1 and i or n + 1 - i], r) end
  end
end

function Ctx:update(what, i, n)
  if self.progress then self.progress:update(what, i, n) end
end

-- pt.spawn, remembered so that whatever is left is reaped at the end.
function Ctx:spawn(kind, fn, ...)
  local w = self.pt.spawn(kind, fn, ...)
  self.workers[#self.workers + 1] = w
  return w
end

-- Join with a timeout.  On timeout the worker is stopped (a process is
-- killed, a thread cancelled) and the answer is false, "timeout ...".
function Ctx:join(w, timeout)
  timeout = timeout or self.join_timeout
  local r = pack(w:join(timeout))
  if r[1] == nil and r[2] == "timeout" then
    if w.kind == "process" then pcall(w.kill, w, "KILL") else pcall(w.cancel, w) end
    w:join(5)
    return false, ("timeout after %g s (worker %s)"):format(timeout,
      w.kind == "process" and "killed" or "cancelled")
  end
  return unpack(r, 1, r.n)
end

-- Spawn, run, join: ok, results... | false, err
function Ctx:run_worker(kind, timeout, fn, ...)
  local ok, w = pcall(self.spawn, self, kind, fn, ...)
  if not ok then return false, "spawn: " .. tostring(w) end
  return self:join(w, timeout)
end

function Ctx:reap()
  for _, w in ipairs(self.workers) do
    local ok, r = pcall(w.join, w, 0)
    if ok and r == nil then
      if w.kind == "process" then pcall(w.kill, w, "KILL") else pcall(w.cancel, w) end
      pcall(w.join, w, 5)
    end
  end
  self.workers = {}
end

-- ---- loading experiments ---------------------------------------------------------

function M.is_file_name(name)
  return name:match("%.lua$") or name:find("/", 1, true)
end

-- Load a built-in experiment by name, or a user's file by path.
-- Returns the experiment, or nil and a message.
function M.load(name)
  local exp, source
  if M.is_file_name(name) then
    local chunk, err = loadfile(name)
    if not chunk then return nil, "cannot load experiment file: " .. tostring(err) end
    local ok, r = pcall(chunk)
    if not ok then return nil, name .. ": " .. tostring(r) end
    exp, source = r, name
  else
    if not name:match("^[%w_]+$") then return nil, ("unknown experiment '%s'"):format(name) end
    local mod = "procthread.lab." .. name
    if not package.loaded[mod] and not (package.preload and package.preload[mod])
       and not searchpath(mod, package.path) then
      return nil, ("unknown experiment '%s' (known: %s)"):format(name, table.concat(M.list(), ", "))
    end
    local ok, r = pcall(require, mod)
    if not ok then return nil, ("experiment '%s' failed to load: %s"):format(name, tostring(r)) end
    exp, source = r, mod
  end
  local ok, err = M.validate(exp)
  if not ok then return nil, ("%s: not an experiment: %s"):format(name, err) end
  return exp, source
end

function M.validate(exp)
  if type(exp) ~= "table" then return nil, "it must return a table, got " .. type(exp) end
  if type(exp.name) ~= "string" or exp.name == "" then return nil, "missing name (a string)" end
  if type(exp.run) ~= "function" then return nil, "missing run(ctx) function" end
  if type(exp.verdict) ~= "function" then return nil, "missing verdict(results) function" end
  if exp.params ~= nil and type(exp.params) ~= "table" then return nil, "params must be a table" end
  return true
end

-- Names of the built-in experiments present in this installation.
function M.list()
  local names = {}
  for _, n in ipairs(claims.order) do
    if searchpath("procthread.lab." .. n, package.path) or package.loaded["procthread.lab." .. n] then
      names[#names + 1] = n
    end
  end
  return names
end

function M.params_for(exp, mode)
  local p = exp.params or {}
  if p.full or p.quick or p.tiny then
    if mode == "tiny" then return p.tiny or p.quick or p.full or {} end
    if mode == "quick" then return p.quick or p.full or {} end
    return p.full or p.quick or {}
  end
  return p
end

local function claim_of(exp)
  local c = exp.claim
  local known = claims.by_name[exp.name]
  if type(c) == "string" then return { process = c, thread = c } end
  if type(c) ~= "table" then c = {} end
  return { process = c.process or (known and known.process) or "?",
           thread = c.thread or (known and known.thread) or "?" }
end

-- ---- verdicts ------------------------------------------------------------------

-- Compute the verdict of `exp` on `results`; never raises.
function M.verdict(exp, results)
  local ok, v = pcall(exp.verdict, results)
  if not ok then
    return { verdict = "not measured", condition = "verdict failed: " .. tostring(v) }
  end
  if type(v) ~= "table" or not M.VERDICTS[v.verdict] then
    return { verdict = "not measured", condition = "verdict() returned " .. tostring(type(v) == "table" and v.verdict or v) }
  end
  return v
end

-- The verdict in the report's words ("holds only if ..."); `bold` marks
-- the verdict itself up in Markdown.
local WORDS = { holds = "holds", conditional = "holds only if", contradicted = "contradicted on this machine",
                ["within noise"] = "within noise" }
function M.verdict_text(v, bold)
  v = v or {}
  local c = v.condition ~= "" and v.condition or nil
  local w = WORDS[v.verdict]
  if not w then return "not measured" .. (c and (" — " .. c) or "") end
  if bold then w = "**" .. w .. "**" end
  if v.verdict == "conditional" then return w .. " " .. (c or "(condition missing)") end
  return w .. (c and (" — " .. c) or "")
end

-- ---- running ------------------------------------------------------------------

-- Run one experiment.  Returns its result entry for results.json.
function M.run_experiment(exp, opts)
  opts = opts or {}
  local pt = opts.pt or require "procthread"
  local mode = opts.mode or "full"
  local res = {
    name = exp.name, title = exp.title, aspect = exp.aspect or (claims.by_name[exp.name] or {}).aspect or exp.name,
    claim = claim_of(exp), rule = exp.rule, source = opts.source, mode = mode,
    params = M.params_for(exp, mode), series = {}, data = {},
  }
  local ctx = setmetatable({
    pt = pt, params = res.params, mode = mode, results = res, workers = {},
    progress = opts.progress, join_timeout = opts.join_timeout or 30,
  }, Ctx)
  local t0, cpu0 = pt.now(), M.cpu_times()
  local ok, err = xpcall(function() return exp.run(ctx) end, debug.traceback)
  ctx:reap()
  res.elapsed = pt.now() - t0
  res.other_cores = M.other_cores(cpu0, M.cpu_times(), res.elapsed)
  -- LuaJIT traces keep the objects they specialised on (a shared table a
  -- spin loop polled) alive until flushed: let each experiment free what
  -- it made before the next one starts
  if type(jit) == "table" and jit.flush then jit.flush() end
  collectgarbage(); collectgarbage()
  if not ok then res.error = tostring(err) end
  res.verdict = M.verdict_of(exp, res)
  return res
end

-- Why every sample of res failed: the first error of its series, when
-- it recorded failed samples and no sample at all; else nil.
function M.all_failed(res)
  local why, any = nil, false
  for key, s in pairs(res.series or {}) do
    if #(s.samples or {}) > 0 then return nil end
    if (s.failed or 0) > 0 then
      any = true
      local e = s.errors and s.errors[1]
      if not why or key < why.key then why = { key = key, message = e and e.message or "failed" } end
    end
  end
  return any and ("every sample failed (%s: %s)"):format(why.key, why.message:match("[^\n]*")) or nil
end

-- The verdict of a result entry: "not measured" when its run raised
-- (whatever samples it left) or every sample it took failed (with the
-- rule's own reason when it says "not measured" too), else what the
-- experiment's rule says.
function M.verdict_of(exp, res)
  if res.error then
    return { verdict = "not measured", condition = "run failed: " .. (res.error:match("[^\n]*")) }
  end
  local v, failed = M.verdict(exp, res), M.all_failed(res)
  if failed and v.verdict ~= "not measured" then return { verdict = "not measured", condition = failed } end
  return v
end

-- Run experiments.  opts: names (list; default all built-ins present),
-- mode ("full" | "quick" | "tiny"), progress (a progress object or false).
-- Returns the results document, or nil and a message for bad input.
function M.run(opts)
  opts = opts or {}
  local pt = opts.pt or require "procthread"
  local names = opts.names
  if not names or #names == 0 then
    -- all built-ins; creation last: the memory it makes the parent hold
    -- may not go back to the system, and would slow every later fork
    names = {}
    local last = {}
    for _, n in ipairs(M.list()) do
      if n == "creation" then last[#last + 1] = n else names[#names + 1] = n end
    end
    for _, n in ipairs(last) do names[#names + 1] = n end
  end
  local exps = {}
  for _, n in ipairs(names) do
    local exp, source = M.load(n)
    if not exp then return nil, source end
    exps[#exps + 1] = { exp = exp, source = source }
  end
  local doc = { format = M.FORMAT, mode = opts.mode or "full", machine = M.machine(pt), experiments = {} }
  local progress = opts.progress
  if progress == nil then progress = M.progress() end
  local t0, cpu0 = pt.now(), M.cpu_times()
  -- with no names, the claims table shows every claim (not run ones too)
  doc.complete = not opts.names or #opts.names == 0 or nil
  if progress and progress.plan then progress:plan(names, doc.mode) end
  for i, e in ipairs(exps) do
    if progress then progress:start(e.exp.name, i, #exps) end
    local res = M.run_experiment(e.exp, { pt = pt, mode = doc.mode, progress = progress or nil, source = e.source })
    doc.experiments[#doc.experiments + 1] = res
    if progress then
      local v = res.verdict
      progress:done(M.verdict_text(v))
    end
  end
  doc.elapsed = pt.now() - t0
  doc.machine.loadavg_after = loadavg()
  doc.machine.other_cores = M.other_cores(cpu0, M.cpu_times(), doc.elapsed)
  return doc
end

-- Recompute every verdict from the samples of a stored results document,
-- with the experiment's current verdict() when the experiment can be
-- loaded (else the stored verdict stays).
function M.reverdict(doc)
  for _, res in ipairs(doc.experiments or {}) do
    local exp = M.load(res.source and M.is_file_name(res.source) and res.source or res.name)
    if exp then
      res.verdict = M.verdict_of(exp, res)
    end
  end
  return doc
end

return M
