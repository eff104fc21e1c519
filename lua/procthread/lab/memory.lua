-- memory: what a worker's write reaches, and what an idle worker costs.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"
local format = require "procthread.lab.format"
local fmt, cell = format.value, format.cell
local stats = require "procthread.lab.stats"

local E = {
  name = "memory",
  title = "what a worker's write reaches; memory per idle worker",
  aspect = claims.by_name.memory.aspect,
  claim = claims.by_name.memory,
  params = {
    full = { trials = 3, counts = { 4, 8, 16, 32, 64 }, mem_trials = 3, settle = 0.3 },
    quick = { trials = 2, counts = { 4, 16, 32 }, mem_trials = 2, settle = 0.25 },
    tiny = { trials = 1, counts = { 1, 2 }, mem_trials = 1, settle = 0.1 },
  },
  -- the targets that are not shared by construction
  PRIVATE = { "upvalue", "global", "private array" },
  TARGETS = { "upvalue", "global", "private array", "shared array" },
}

E.rule = "Each worker writes 1 into one target and returns what it reads back; the parent then reads the target. " ..
  "A target counts as reached when the parent saw the write in every trial (and in none: not reached). " ..
  "Contradicted: a process write reached the parent through a target that is not explicitly shared " ..
  "(upvalue, global, private array), or no thread write did. Holds: thread writes reached the parent through all three. " ..
  "Otherwise holds only for the targets thread writes reached (listed). Memory per idle worker: " ..
  "the slope of the growth of PSS (the parent's plus the workers' processes') against N idle workers alive: the median " ..
  "of the slopes between every two samples at different N (Theil-Sen), with the p10 – p90 of those slopes as its " ..
  "spread; a slope below zero is noise and shown as 0."

-- One run: a worker of `kind` writes into `target`; did the parent see it?
-- Returns seen (boolean), or nil and an error.
local function probe(ctx, kind, target)
  local pt = ctx.pt
  if target == "upvalue" then
    local up = 0
    local ok, r = ctx:run_worker(kind, 10, function() up = 1; return up end)
    if ok ~= true then return nil, r end
    if r ~= 1 then return nil, "worker did not see its own write" end
    return up == 1
  elseif target == "global" then
    PT_LAB_GLOBAL = 0
    local ok, r = ctx:run_worker(kind, 10, function() PT_LAB_GLOBAL = 1; return PT_LAB_GLOBAL end)
    local seen = PT_LAB_GLOBAL == 1
    PT_LAB_GLOBAL = nil
    if ok ~= true then return nil, r end
    if r ~= 1 then return nil, "worker did not see its own write" end
    return seen
  else
    local how = target == "shared array" and "shared" or "private"
    local oka, arr = pcall(pt.array, 4, how)
    if not oka then return nil, ("pt.array(4, %q): %s"):format(how, tostring(arr)) end
    local ok, r = ctx:run_worker(kind, 10, function(a) a[1] = 1; return a[1] end, arr)
    if ok ~= true then return nil, r end
    if r ~= 1 then return nil, "worker did not see its own write" end
    return arr[1] == 1
  end
end

local function read_pss(pid)
  local s = util.read_file("/proc/" .. tostring(pid) .. "/smaps_rollup")
  if not s then return nil end
  return tonumber(s:match("\nPss:%s*(%d+)") or s:match("^Pss:%s*(%d+)")), tonumber(s:match("\nRss:%s*(%d+)") or s:match("^Rss:%s*(%d+)"))
end

local function idle(seconds)
  local pt = require "procthread"
  pt.sleep(seconds)
  return true
end

function E.run(ctx)
  local pt, p = ctx.pt, ctx.params
  -- 1. the visibility matrix
  for _, kind in ipairs({ "process", "thread" }) do
    for _, target in ipairs(E.TARGETS) do
      local key = ("seen/%s/%s"):format(kind, target)
      ctx:sample(key, { kind = kind, target = target }, { n = p.trials, unit = "bool", label = kind .. " writes " .. target },
        function()
          local seen, err = probe(ctx, kind, target)
          if seen == nil then return nil, err end
          return seen and 1 or 0
        end)
    end
  end
  -- 2. memory per idle worker
  for _, kind in ipairs({ "process", "thread" }) do
    for _, n in ipairs(p.counts) do
      for t = 1, p.mem_trials do
        ctx:update(("%d idle %s"):format(n, util.plural(kind)), t, p.mem_trials)
        collectgarbage(); collectgarbage()
        local okm, before = pcall(pt.memory)
        local ws, err = {}, nil
        if not okm or type(before) ~= "table" or not before.pss_kib then
          err = "pt.memory() gives no pss_kib: " .. tostring(before)
        else
          local hold = p.settle + 2 + n * 0.05
          for i = 1, n do
            local ok, w = pcall(ctx.spawn, ctx, kind, idle, hold)
            if not ok then err = "spawn: " .. tostring(w); break end
            ws[i] = w
          end
          if not err then
            pt.sleep(p.settle)
            local after = pt.memory()
            local pss, rss = after.pss_kib - before.pss_kib, after.rss_kib - before.rss_kib
            if kind == "process" then
              for _, w in ipairs(ws) do
                local cp, cr = read_pss(w.id)
                if not cp then err = "cannot read /proc/" .. tostring(w.id) .. "/smaps_rollup"; break end
                pss, rss = pss + cp, rss + cr
              end
            end
            if not err then
              ctx:add(("idle_pss/%s/%d"):format(kind, n), { kind = kind, workers = n }, pss / n, "KiB")
              ctx:add(("idle_rss/%s/%d"):format(kind, n), { kind = kind, workers = n }, rss / n, "KiB")
            end
          end
          -- release them: cancel (a sleeping worker stops at once), then join
          for _, w in ipairs(ws) do pcall(w.cancel, w) end
          for _, w in ipairs(ws) do ctx:join(w, hold + 5) end
        end
        if err then
          ctx:fail(("idle_pss/%s/%d"):format(kind, n), { kind = kind, workers = n }, err, "KiB")
        end
      end
    end
  end
end

-- For kind/target: true (reached in every trial), false (in none),
-- "mixed", or nil (not measured).
local function reached(results, kind, target)
  local s = results.series[("seen/%s/%s"):format(kind, target)]
  if not s or #s.samples == 0 then return nil end
  local yes = 0
  for _, v in ipairs(s.samples) do if v == 1 then yes = yes + 1 end end
  if yes == #s.samples then return true end
  if yes == 0 then return false end
  return "mixed"
end
E.reached = reached

-- The cost of one idle worker: the Theil-Sen slope of the PSS growth
-- (KiB) against N alive, with the p10 - p90 of the pairwise slopes; nil
-- without samples at two different N.
local function idle_cost(results, kind)
  local pts, slopes = {}, {}
  for _, n in ipairs(results.params.counts or {}) do
    local s = results.series[("idle_pss/%s/%d"):format(kind, n)]
    for _, each in ipairs(s and s.samples or {}) do pts[#pts + 1] = { n = n, total = each * n } end
  end
  for i = 1, #pts do
    for j = i + 1, #pts do
      local a, b = pts[i], pts[j]
      if a.n ~= b.n then slopes[#slopes + 1] = (b.total - a.total) / (b.n - a.n) end
    end
  end
  if #slopes == 0 then return nil end
  local sm = stats.summary(slopes)
  local lo, hi = pts[1].n, pts[1].n
  for _, q in ipairs(pts) do lo, hi = math.min(lo, q.n), math.max(hi, q.n) end
  return { kib = sm.median, p10 = sm.p10, p90 = sm.p90, from = lo, to = hi }
end
E.idle_cost = idle_cost

-- "21.5 KiB (p10 – p90 18 – 25 KiB)"; never below zero
local function cost_text(c)
  local function z(x) return fmt(math.max(0, x), "KiB") end
  return ("%s (p10 – p90 %s – %s)"):format(z(c.kib), z(c.p10), z(c.p90))
end
E.cost_text = cost_text

function E.verdict(results)
  local v = {}
  local seen = { process = {}, thread = {} }
  local missing = {}
  for _, kind in ipairs({ "process", "thread" }) do
    for _, t in ipairs(E.PRIVATE) do
      local r = reached(results, kind, t)
      if r == nil then missing[#missing + 1] = kind .. "/" .. t
      elseif r == "mixed" then missing[#missing + 1] = kind .. "/" .. t .. " (inconsistent across trials)"
      elseif r then seen[kind][#seen[kind] + 1] = t end
    end
  end
  for _, kind in ipairs({ "process", "thread" }) do
    local sh = reached(results, kind, "shared array")
    local cost = idle_cost(results, kind)
    local list = #seen[kind] > 0 and table.concat(seen[kind], ", ") or "none"
    v[kind] = ("parent saw %d of 3 private writes (%s); shared array: %s"):format(#seen[kind], list,
      sh == nil and "not measured" or sh == true and "seen" or sh == false and "not seen" or "inconsistent")
    if cost then v[kind] = v[kind] .. ("; %s PSS per idle %s (slope over %d–%d alive)"):format(cost_text(cost), kind, cost.from, cost.to) end
  end
  -- the decision needs the private array on both sides at least
  if reached(results, "process", "private array") == nil or reached(results, "thread", "private array") == nil
     or #missing == #E.PRIVATE * 2 then
    v.verdict = "not measured"
    v.condition = "missing: " .. table.concat(missing, ", ")
    return v
  end
  local pc, tc = idle_cost(results, "process"), idle_cost(results, "thread")
  local costs = (pc and tc) and (" An idle process cost %s of PSS and an idle thread %s."):format(cost_text(pc), cost_text(tc)) or ""
  if #seen.process > 0 then
    v.verdict = "contradicted"
    v.condition = "a process write reached the parent through: " .. table.concat(seen.process, ", ")
  elseif #seen.thread == 0 then
    v.verdict = "contradicted"
    v.condition = "no thread write reached the parent, not even through a private array"
  elseif #seen.thread == #E.PRIVATE then
    v.verdict = "holds"
    v.condition = "thread writes to an upvalue, a global and a private array all reached the parent; no process write did"
  else
    local notl = {}
    for _, t in ipairs(E.PRIVATE) do
      local found = false
      for _, x in ipairs(seen.thread) do if x == t then found = true end end
      if not found then notl[#notl + 1] = t end
    end
    v.verdict = "conditional"
    v.condition = ("\"shared memory\" means the process's raw memory: a thread's writes reached the parent through %s but not through %s (each procthread thread runs its own Lua state); no process write did"):format(
      table.concat(seen.thread, ", "), table.concat(notl, ", "))
  end
  if #missing > 0 then v.condition = v.condition .. " (not measured: " .. table.concat(missing, ", ") .. ")" end
  local psh = reached(results, "process", "shared array")
  v.reading = ("A forked process changed only its own copy of %s, while a thread's writes reached the parent through %s.%s"):format(
    psh == true and "every target except the shared array" or "every target (its write to the shared array was not seen either)",
    #seen.thread > 0 and table.concat(seen.thread, ", ") or "no private target", costs)
  if #seen.process > 0 then
    v.reading = ("Process writes reached the parent through %s, which a separate memory space would not allow.%s"):format(table.concat(seen.process, ", "), costs)
  end
  return v
end

function E.table(results)
  local rows = {}
  local function seen_cell(kind, t)
    local r = reached(results, kind, t)
    local s = results.series[("seen/%s/%s"):format(kind, t)]
    local n = s and #s.samples or 0
    if r == nil then return "not measured" .. ((s and s.failed > 0) and (" (%d failed)"):format(s.failed) or "") end
    if r == "mixed" then return ("inconsistent (%d trials)"):format(n) end
    return (r and "**seen**" or "not seen") .. (" (%d/%d)"):format(r and n or 0, n)
  end
  for _, t in ipairs(E.TARGETS) do
    rows[#rows + 1] = { t, seen_cell("process", t), seen_cell("thread", t) }
  end
  local t1 = { caption = "What the parent sees after a worker writes 1 into each target:",
               header = { "target", "process wrote", "thread wrote" }, rows = rows }
  local rows2 = {}
  for _, n in ipairs(results.params.counts or {}) do
    local r = { tostring(n) }
    for _, kind in ipairs({ "process", "thread" }) do
      local s = util.summary(results, ("idle_pss/%s/%d"):format(kind, n))
      local q = util.summary(results, ("idle_rss/%s/%d"):format(kind, n))
      r[#r + 1] = cell(s.median, "KiB")
      r[#r + 1] = cell(q.median, "KiB")
    end
    rows2[#rows2 + 1] = r
  end
  local slope = { "per worker (slope)" }
  for _, kind in ipairs({ "process", "thread" }) do
    local c = idle_cost(results, kind)
    slope[#slope + 1] = c and cost_text(c) or "—"
    slope[#slope + 1] = ""
  end
  rows2[#rows2 + 1] = slope
  local t2 = { caption = "Memory per idle worker (growth of the total divided by the number alive; last row: the slope of the growth against N, which the claims table uses):",
               header = { "workers alive", "process: PSS each", "process: RSS each", "thread: PSS each", "thread: RSS each" },
               rows = rows2 }
  return { t1, t2 }
end

function E.charts(results)
  local series = {}
  for _, kind in ipairs({ "process", "thread" }) do
    local pts = {}
    for _, n in ipairs(results.params.counts or {}) do
      local s = util.summary(results, ("idle_pss/%s/%d"):format(kind, n))
      -- memory does not shrink below nothing: noise under zero is drawn at 0
      if s.median then
        pts[#pts + 1] = { x = n, y = math.max(0, s.median * n), lo = math.max(0, s.p10 * n), hi = math.max(0, s.p90 * n) }
      end
    end
    series[#series + 1] = { name = kind .. "es" , points = pts }
  end
  series[1].name = "processes"; series[2].name = "threads"
  return { {
    file = "memory.svg",
    title = "Memory of idle workers",
    subtitle = "growth of PSS (parent + worker processes) with N idle workers alive; median, bars p10–p90",
    x = { label = "idle workers alive", min = 0 },
    y = { label = "PSS growth", unit = "KiB", min = 0 },
    series = series,
  } }
end

return E
