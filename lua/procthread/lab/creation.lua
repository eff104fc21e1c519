-- creation: spawn+join latency of a thread versus a process, as the
-- parent's memory grows.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"
local format = require "procthread.lab.format"
local fmt = format.value
local stats = require "procthread.lab.stats"

local E = {
  name = "creation",
  title = "spawn + join latency against the parent's memory",
  aspect = claims.by_name.creation.aspect,
  claim = claims.by_name.creation,
  params = {
    full = { sizes_mib = { 0, 64, 256, 1024 }, n = 25, warmup = 3 },
    quick = { sizes_mib = { 0, 32, 128 }, n = 8, warmup = 2 },
    tiny = { sizes_mib = { 0, 8 }, n = 2, warmup = 1 },
  },
  -- "costs more" needs a clear margin over run-to-run noise
  FACTOR = 1.5,
}

E.rule = ("At each parent size m, r(m) = median process spawn+join / median thread spawn+join. " ..
  "The process costs more at m when r(m) >= %g and the noise rule agrees: the process's p10 – p90 lies wholly above %g x " ..
  "the thread's (overlapping spreads are within noise: neither more nor less). Holds: more at every size measured; " ..
  "contradicted: at none; otherwise holds only above (or below) the parent size where r crosses %g, interpolated linearly " ..
  "between the two sizes outside the noise around the crossing."):format(E.FACTOR, E.FACTOR, E.FACTOR)

local function noop() return 1 end

function E.run(ctx)
  local p = ctx.params
  local pt = ctx.pt
  local ballast, have = {}, 0
  local chunk = 1048576
  for _, mib in ipairs(p.sizes_mib) do
    -- grow the parent's Lua heap to `mib` MiB of distinct, touched strings
    while have < mib do
      have = have + 1
      ballast[have] = string.rep(string.char(65 + have % 26), chunk - 16) .. ("%016d"):format(have)
    end
    collectgarbage(); collectgarbage()
    local okm, mem = pcall(pt.memory)
    ctx:set("parent_rss_kib_" .. mib, okm and type(mem) == "table" and mem.rss_kib or nil)
    for _, kind in ipairs({ "process", "thread" }) do
      ctx:time(("spawn_join/%s/%d"):format(kind, mib), { kind = kind, parent_mib = mib },
        { n = p.n, warmup = p.warmup, label = ("%s spawn+join, parent +%d MiB"):format(kind, mib),
          stop_after_failures = 3 },
        function()
          local ok, err = ctx:run_worker(kind, 10, noop)
          if ok ~= true then return nil, err end
          return true
        end)
    end
  end
  ballast = nil
  collectgarbage(); collectgarbage()
end

-- Points (size, process median, thread median, ratio) measured on both sides.
local function points(results)
  local pts = {}
  for _, mib in ipairs(results.params.sizes_mib or {}) do
    local sp = util.summary(results, ("spawn_join/process/%d"):format(mib))
    local st = util.summary(results, ("spawn_join/thread/%d"):format(mib))
    if sp.median and st.median and st.median > 0 then
      pts[#pts + 1] = { mib = mib, p = sp, t = st, r = sp.median / st.median, state = stats.versus(sp, st, E.FACTOR) }
    end
  end
  table.sort(pts, function(a, b) return a.mib < b.mib end)
  return pts
end
E.points = points

function E.verdict(results)
  local pts = points(results)
  if #pts == 0 then
    return { verdict = "not measured", condition = "no size measured on both sides" }
  end
  local F = E.FACTOR
  local more, first, last = 0, pts[1], pts[#pts]
  local clear, noisy = {}, {}     -- the sizes outside the noise; the others
  for _, q in ipairs(pts) do
    if q.state == "above" then more = more + 1 end
    if q.state == "within noise" then noisy[#noisy + 1] = ("+%d MiB (%.2f×)"):format(q.mib, q.r)
    else clear[#clear + 1] = q end
  end
  local noise = #noisy > 0 and ("; within noise at %s"):format(table.concat(noisy, ", ")) or ""
  local v = {}
  v.process = ("%s at +%d MiB, %s at +%d MiB"):format(fmt(first.p.median, "s"), first.mib, fmt(last.p.median, "s"), last.mib)
  v.thread = ("%s at +%d MiB, %s at +%d MiB"):format(fmt(first.t.median, "s"), first.mib, fmt(last.t.median, "s"), last.mib)
  local rmin, rmax = math.huge, -math.huge
  for _, q in ipairs(pts) do rmin = math.min(rmin, q.r); rmax = math.max(rmax, q.r) end
  local range = ("+%d to +%d MiB"):format(first.mib, last.mib)
  if #clear == 0 then
    v.verdict = "within noise"
    v.condition = ("at every parent size measured (%s; ratios %.2f–%.2f×)"):format(range, rmin, rmax)
  elseif more == #clear then
    v.verdict = "holds"
    v.condition = ("a process costs %.1f–%.1f× a thread at every parent size measured outside the noise (%s)%s"):format(rmin, rmax, range, noise)
  elseif more == 0 then
    v.verdict = "contradicted"
    v.condition = ("a process does not cost %g× a thread outside the noise at any parent size measured (%s; ratios %.2f–%.2f×)%s"):format(F, range, rmin, rmax, noise)
  else
    -- find the crossing(s)
    local parts = {}
    for i = 2, #clear do
      local a, b = clear[i - 1], clear[i]
      if (a.state == "above") ~= (b.state == "above") then
        local x = stats.cross(a.mib, a.r, b.mib, b.r, F)
        parts[#parts + 1] = { up = b.r >= F, x = x, a = a, b = b }
      end
    end
    v.verdict = "conditional"
    if #parts == 1 then
      local c = parts[1]
      v.condition = ("the parent holds %s than about %.0f MiB: only there does a process cost %g× a thread or more (r = %.2f at +%d MiB, %.2f at +%d MiB)"):format(
        c.up and "more" or "less", c.x, F, c.a.r, c.a.mib, c.b.r, c.b.mib) .. noise
    else
      local yes, no = {}, {}
      for _, q in ipairs(pts) do
        local t = ("+%d MiB (%.2f×)"):format(q.mib, q.r)
        if q.state == "above" then yes[#yes + 1] = t elseif q.state == "below" then no[#no + 1] = t end
      end
      v.condition = ("the parent holds one of %s: there a process cost %g× a thread or more%s%s"):format(
        table.concat(yes, ", "), F, #no > 0 and (", not at " .. table.concat(no, ", ") .. " (the ratio does not change monotonically with the parent's size here)") or "",
        noise)
    end
  end
  local slope_p = (last.mib > first.mib) and (last.p.median - first.p.median) / (last.mib - first.mib) * 1024 or 0
  local slope_t = (last.mib > first.mib) and (last.t.median - first.t.median) / (last.mib - first.mib) * 1024 or 0
  v.reading = ("Spawning and joining a process took %s with +%d MiB in the parent and %s with +%d MiB (%s per GiB), against %s and %s for a thread (%s per GiB). %s"):format(
    fmt(first.p.median, "s"), first.mib, fmt(last.p.median, "s"), last.mib, fmt(slope_p, "s"),
    fmt(first.t.median, "s"), fmt(last.t.median, "s"), fmt(slope_t, "s"),
    v.verdict == "holds" and ("Process creation is the expensive one at every size measured%s."):format(
      stats.versus(last.p, first.p, 1) == "above" and ", and fork's cost grows with the memory it must map"
      or "; its cost did not grow with the parent's memory outside the noise") or
    v.verdict == "contradicted" and "On this machine a procthread thread, which builds a fresh Lua state, is not cheaper by a clear margin." or
    ("The difference depends on the parent: " .. v.condition .. "."))
  return v
end

function E.table(results)
  local rows = {}
  for _, mib in ipairs(results.params.sizes_mib or {}) do
    local sp = util.summary(results, ("spawn_join/process/%d"):format(mib))
    local st = util.summary(results, ("spawn_join/thread/%d"):format(mib))
    local rss = results.data["parent_rss_kib_" .. mib]
    rows[#rows + 1] = { "+" .. mib .. " MiB", rss and fmt(rss, "KiB") or "?", format.spread(sp, "s"), format.spread(st, "s"),
      (sp.median and st.median) and format.ratio(sp.median / st.median) or "—",
      ("%d / %d"):format(sp.failed, st.failed) }
  end
  return { header = { "parent ballast", "parent RSS", "process: median (p10 – p90)", "thread: median (p10 – p90)",
                      "process / thread", "failed (process / thread)" }, rows = rows }
end

function E.charts(results)
  local series = {}
  for _, kind in ipairs({ "process", "thread" }) do
    local pts = {}
    for _, mib in ipairs(results.params.sizes_mib or {}) do
      local s = util.summary(results, ("spawn_join/%s/%d"):format(kind, mib))
      if s.median then pts[#pts + 1] = { x = mib, y = s.median, lo = s.p10, hi = s.p90 } end
    end
    series[#series + 1] = { name = kind, points = pts }
  end
  return { {
    file = "creation.svg",
    title = "Creation cost against parent memory",
    subtitle = "spawn + join of a worker that returns at once; median, bars p10–p90",
    x = { label = "memory held by the parent's Lua heap (MiB)" },
    y = { label = "spawn + join latency", unit = "s", log = true },
    series = series,
  } }
end

return E
