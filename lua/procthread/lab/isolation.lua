-- isolation: a buggy worker scribbles over an array the others use; what
-- do the other workers and the parent find corrupted?
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"

local E = {
  name = "isolation",
  title = "a buggy worker scribbles over data the others use",
  aspect = claims.by_name.isolation.aspect,
  claim = claims.by_name.isolation,
  params = {
    -- n: array length; others: healthy workers; delay: when they look
    full = { n = 200000, others = 3, trials = 5, delay = 0.4 },
    quick = { n = 50000, others = 3, trials = 2, delay = 0.3 },
    tiny = { n = 2000, others = 1, trials = 1, delay = 0.25 },
  },
  TARGETS = { "private", "shared" },
}

E.rule = "The parent fills an array with a[i] = i; the healthy workers start and wait; the buggy worker writes -1 " ..
  "into every 10th element and is joined; then each healthy worker and the parent count the elements that differ. " ..
  "An observer is corrupted when it counts at least one. f(kind, array) = corrupted observers / all observers over valid trials " ..
  "(a trial is valid when the buggy worker ended before the others looked). " ..
  "Contradicted: f(process, private) > 0 or f(thread, private) = 0. Holds only for memory not shared explicitly: " ..
  "f(process, shared) > 0 as well. Holds: otherwise."

-- healthy worker: wait until `at`, then count what differs from a[i] = i
local function healthy(a, n, at)
  local pt = require "procthread"
  local left = at - pt.now()
  if left > 0 then pt.sleep(left) end
  local bad = 0
  for i = 1, n do if a[i] ~= i then bad = bad + 1 end end
  return bad
end

local function buggy(a, n)
  local w = 0
  for i = 1, n, 10 do a[i] = -1; w = w + 1 end
  return w
end

local function run_trial(ctx, kind, target)
  local pt, p = ctx.pt, ctx.params
  local oka, a = pcall(pt.array, p.n, target)
  if not oka then return nil, ("pt.array(n, %q): %s"):format(target, tostring(a)) end
  for i = 1, p.n do a[i] = i end
  local at = pt.now() + p.delay
  local ws = {}
  for k = 1, p.others do
    local ok, w = pcall(ctx.spawn, ctx, kind, healthy, a, p.n, at)
    if not ok then
      for _, x in ipairs(ws) do ctx:join(x, p.delay + 10) end
      return nil, "spawn: " .. tostring(w)
    end
    ws[k] = w
  end
  local okb, written = ctx:run_worker(kind, p.delay + 10, buggy, a, p.n)
  local done = pt.now()
  local counts, err = {}, nil
  for k, w in ipairs(ws) do
    local ok, bad = ctx:join(w, p.delay + 30)
    if ok ~= true then err = err or ("healthy worker: " .. tostring(bad)) else counts[k] = bad end
  end
  if okb ~= true then return nil, "buggy worker: " .. tostring(written) end
  if done > at then return nil, "the buggy worker ended after the others looked (raise delay)" end
  if err then return nil, err end
  local parent_bad = 0
  for i = 1, p.n do if a[i] ~= i then parent_bad = parent_bad + 1 end end
  return counts, parent_bad, written
end

function E.run(ctx)
  local p = ctx.params
  for _, kind in ipairs({ "process", "thread" }) do
    for _, target in ipairs(E.TARGETS) do
      local key = ("corrupted/%s/%s"):format(kind, target)
      ctx:sample(key, { kind = kind, target = target }, { n = p.trials, unit = "observers",
                   label = ("buggy %s on a %s array"):format(kind, target) },
        function()
          local counts, parent_bad, written = run_trial(ctx, kind, target)
          if not counts then return nil, parent_bad end
          local observers = 0
          for _, c in ipairs(counts) do if c > 0 then observers = observers + 1 end end
          if parent_bad > 0 then observers = observers + 1 end
          ctx:add(("parent_elements/%s/%s"):format(kind, target), { kind = kind, target = target }, parent_bad, "elements")
          ctx:set("written", written)
          return observers
        end)
    end
  end
end

-- fraction of observers corrupted, or nil
local function frac(results, kind, target)
  local s = results.series[("corrupted/%s/%s"):format(kind, target)]
  if not s or #s.samples == 0 then return nil end
  local per = (results.params.others or 0) + 1
  local sum = 0
  for _, v in ipairs(s.samples) do sum = sum + v end
  return sum / (per * #s.samples), sum, per * #s.samples
end
E.frac = frac

function E.verdict(results)
  local v = {}
  local function txt(kind)
    local parts = {}
    for _, t in ipairs(E.TARGETS) do
      local f, a, b = frac(results, kind, t)
      parts[#parts + 1] = f and ("%s array: %d of %d observers corrupted"):format(t, a, b) or (t .. " array: not measured")
    end
    return table.concat(parts, "; ")
  end
  v.process, v.thread = txt("process"), txt("thread")
  local pp, tp, ps = frac(results, "process", "private"), frac(results, "thread", "private"), frac(results, "process", "shared")
  if not pp or not tp then
    v.verdict = "not measured"
    v.condition = "the private array was not measured for " .. (not pp and "processes" or "threads")
    return v
  end
  if pp > 0 then
    v.verdict = "contradicted"
    v.condition = ("a buggy process corrupted %.0f%% of the observers of a private array"):format(100 * pp)
  elseif tp == 0 then
    v.verdict = "contradicted"
    v.condition = "a buggy thread corrupted nobody's copy of a private array"
  elseif ps and ps > 0 then
    v.verdict = "conditional"
    v.condition = ("the memory is not shared explicitly: a buggy process corrupted no observer of a private array (a thread: %.0f%%), but %.0f%% of the observers of a shared array"):format(100 * tp, 100 * ps)
  else
    v.verdict = "holds"
    v.condition = ("a buggy process corrupted no other observer (private%s), a buggy thread %.0f%% of them"):format(ps and " and shared arrays" or " array", 100 * tp)
  end
  v.reading = ("The scribbles of a buggy thread were seen by %.0f%% of the other threads and the parent, those of a buggy process by %.0f%%%s. %s"):format(
    100 * tp, 100 * pp,
    pp == 0 and " — the others kept their own copy-on-write pages"
      or pp < 1 and " — some observers kept their own copy-on-write pages, others did not"
      or " — no observer kept a copy of its own",
    ps and ("Memory a process shares on purpose is a different matter: %.0f%% of the observers of a shared array saw the damage."):format(100 * ps)
       or "The shared-array control was not measured.")
  return v
end

function E.table(results)
  local rows = {}
  for _, kind in ipairs({ "process", "thread" }) do
    for _, t in ipairs(E.TARGETS) do
      local f, a, b = frac(results, kind, t)
      local pe = util.summary(results, ("parent_elements/%s/%s"):format(kind, t))
      local s = results.series[("corrupted/%s/%s"):format(kind, t)]
      rows[#rows + 1] = { kind, t, f and ("%d / %d (%.0f%%)"):format(a, b, 100 * f) or "not measured",
        pe.median and ("%.0f of %.0f"):format(pe.median, results.params.n) or "—",
        s and s.failed or 0 }
    end
  end
  return { header = { "buggy worker", "array", "observers that found corruption", "elements corrupted, as the parent sees them (median)", "failed trials" },
           rows = rows }
end

return E
