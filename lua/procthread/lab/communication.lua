-- communication: round-trip latency and throughput over message sizes for
-- a shared-table handoff and a pipe, between threads and between
-- processes; shared-counter increments per second.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"
local format = require "procthread.lab.format"
local fmt = format.value
local stats = require "procthread.lab.stats"

local E = {
  name = "communication",
  title = "latency and throughput: shared table versus pipe",
  aspect = claims.by_name.communication.aspect,
  claim = claims.by_name.communication,
  params = {
    full = { sizes = { 8, 64, 512, 4096, 32768, 262144, 1048576 }, n_small = 200, n_big = 40, warmup = 20,
             tput_bytes = 32 * 1048576, tput_min = 64, tput_max = 20000, tput_n = 5, ring = 8,
             counter_m = 200000, counter_n = 5, budget = 8, tput_s = 1, spin_s = 0.001 },
    quick = { sizes = { 8, 512, 32768, 1048576 }, n_small = 40, n_big = 10, warmup = 5,
              tput_bytes = 4 * 1048576, tput_min = 16, tput_max = 3000, tput_n = 2, ring = 8,
              counter_m = 30000, counter_n = 3, budget = 1.5, tput_s = 0.25, spin_s = 0.001 },
    tiny = { sizes = { 8, 4096 }, n_small = 3, n_big = 3, warmup = 1,
             tput_bytes = 65536, tput_min = 4, tput_max = 50, tput_n = 1, ring = 4,
             counter_m = 500, counter_n = 1, budget = 1, tput_s = 0.05, spin_s = 0.001 },
  },
  MECHS = { "table", "pipe" },
  MECH_TEXT = { table = "shared table", pipe = "pipe" },
  SLOWER = 1.2,   -- "slower" needs at least this ratio (noise margin)
}

E.rule = ("Round trip: the parent hands a message of s bytes to an echo worker and waits for it back; median over samples. " ..
  "r(s) = median round trip over a pipe between processes (IPC) / median round trip through a shared table between threads " ..
  "(shared variables). IPC is slower at s when r(s) >= %g and the noise rule agrees: the pipe's p10 – p90 lies wholly above " ..
  "%g x the shared table's (overlapping spreads are within noise, never slower). Holds: slower at every size; contradicted: " ..
  "at none; otherwise holds only for the sizes where it is (listed as ranges). Also reported: the sizes where the pipe is " ..
  "2x or more by the same rule, and whether the same mechanism between processes and between threads differs by more than " ..
  "1.3x outside the noise (whether the mechanism or the kind of worker decides)."):format(E.SLOWER, E.SLOWER)

-- ---- the echo workers (no upvalues: they cross to threads by copy) --------

-- Waiting in the shared-table handoff: spin (the fast path when both
-- sides have a core), and once `spin_s` seconds went by without news,
-- sleep a moment between looks, so that a waiter never holds the CPU its
-- partner needs on a busy machine.
local function table_worker(st, idle, spin_s)
  local pt = require "procthread"
  local now, sleep = pt.now, pt.sleep
  local seen, spins, since = 0, 0, now()
  local function wait()
    spins = spins + 1
    if spins % 64 == 0 then
      local t = now()
      if t - since > idle then error("no message for " .. idle .. " s", 0) end
      if t - since > spin_s then sleep(0.0001) end
    end
  end
  while true do
    local seq = st.seq
    if seq ~= seen then
      seen = seq
      local op = st.op
      if op == "echo" then
        st.reply = st.msg
        st.ack = seq
      elseif op == "sink" then
        local count, ring = st.count, st.ring
        local tail, bytes = 0, 0
        since = now()
        while tail < count do
          if st.head > tail then
            bytes = bytes + #st["s" .. (tail % ring)]
            tail = tail + 1
            st.tail = tail
            since = now()
          else
            wait()
          end
        end
        st.reply = bytes
        st.ack = seq
      elseif op == "stop" then
        st.ack = seq
        return true
      end
      since = now()
    else
      wait()
    end
  end
end

local function pipe_worker(req, resp, idle)
  while true do
    local op, a = req:recv(idle)
    if op == nil then error("recv: " .. tostring(a), 0) end
    if op == "echo" then
      resp:send(a)
    elseif op == "sink" then
      local bytes = 0
      for _ = 1, a do
        local m, err = req:recv(idle)
        if m == nil then error("sink recv: " .. tostring(err), 0) end
        bytes = bytes + #m
      end
      resp:send(bytes)
    elseif op == "stop" then
      return true
    end
  end
end

local function counter_worker(st, m, at)
  local pt = require "procthread"
  while pt.now() < at do end
  local t0 = pt.now()
  for _ = 1, m do pt.add(st, "c", 1) end
  return t0, pt.now()
end

-- ---- the parent's side of each mechanism ----------------------------------------

-- The parent's side of the same wait (see table_worker).
local function spin_until(cond, deadline, now, sleep, spin_s)
  local k, t0 = 0, now()
  while not cond() do
    k = k + 1
    if k % 64 == 0 then
      local t = now()
      if t > deadline then return false end
      if t - t0 > spin_s then sleep(0.0001) end
    end
  end
  return true
end

-- A channel: start(kind) -> rtt(payload), sink(payload, count), stop()
local function table_channel(ctx, kind)
  local pt = ctx.pt
  local now = pt.now
  local ok, st = pcall(pt.shared_table, { seq = 0, ack = 0, head = 0, tail = 0 })
  if not ok then return nil, "pt.shared_table: " .. tostring(st) end
  local spin_s = ctx.params.spin_s or 0.001
  local okw, w = pcall(ctx.spawn, ctx, kind, table_worker, st, 30, spin_s)
  if not okw then return nil, "spawn: " .. tostring(w) end
  local seq = 0
  local c = {}
  function c.rtt(payload)
    if c.broken then return nil, c.broken end
    seq = seq + 1
    st.msg = payload; st.op = "echo"; st.seq = seq
    local s = seq
    if not spin_until(function() return st.ack == s end, now() + 10, now, pt.sleep, spin_s) then
      c.broken = "channel given up after a lost echo"
      return nil, "no echo within 10 s"
    end
    if #st.reply ~= #payload then return nil, "echo of the wrong size" end
    return true
  end
  function c.sink(payload, count)
    if c.broken then return nil, c.broken end
    seq = seq + 1
    local ring = ctx.params.ring
    st.count = count; st.ring = ring; st.head = 0; st.tail = 0; st.op = "sink"; st.seq = seq
    local deadline = now() + 10
    for k = 0, count - 1 do
      if not spin_until(function() return k - st.tail < ring end, deadline, now, pt.sleep, spin_s) then
        c.broken = "channel given up after a stalled stream"
        return nil, "sink stalled"
      end
      st["s" .. (k % ring)] = payload
      st.head = k + 1
    end
    local s = seq
    if not spin_until(function() return st.ack == s end, deadline, now, pt.sleep, spin_s) then
      c.broken = "channel given up after a stalled stream"
      return nil, "sink did not answer"
    end
    if st.reply ~= #payload * count then return nil, "sink counted " .. tostring(st.reply) .. " bytes" end
    for k = 0, ring - 1 do st["s" .. k] = nil end
    return true
  end
  function c.stop()
    seq = seq + 1
    st.op = "stop"; st.seq = seq
    return ctx:join(w, 10)
  end
  return c
end

local function pipe_channel(ctx, kind)
  local pt = ctx.pt
  local ok1, req = pcall(pt.pipe)
  if not ok1 then return nil, "pt.pipe: " .. tostring(req) end
  local ok2, resp = pcall(pt.pipe)
  if not ok2 then req:close(); return nil, "pt.pipe: " .. tostring(resp) end
  local okw, w = pcall(ctx.spawn, ctx, kind, pipe_worker, req, resp, 30)
  if not okw then req:close(); resp:close(); return nil, "spawn: " .. tostring(w) end
  local c = {}
  function c.rtt(payload)
    local oks, e = req:send("echo", payload)
    if not oks then return nil, "send: " .. tostring(e) end
    local r, err = resp:recv(10)
    if r == nil then return nil, "recv: " .. tostring(err) end
    if #r ~= #payload then return nil, "echo of the wrong size" end
    return true
  end
  function c.sink(payload, count)
    local oks, e = req:send("sink", count)
    if not oks then return nil, "send: " .. tostring(e) end
    for _ = 1, count do
      oks, e = req:send(payload)
      if not oks then return nil, "send: " .. tostring(e) end
    end
    local r, err = resp:recv(30)
    if r ~= #payload * count then return nil, "sink: " .. tostring(r or err) end
    return true
  end
  function c.stop()
    pcall(req.send, req, "stop")
    local r = util.pack(ctx:join(w, 10))
    req:close(); resp:close()
    return (table.unpack or unpack)(r, 1, r.n)
  end
  return c
end

local function open_channel(ctx, mech, kind)
  if mech == "table" then return table_channel(ctx, kind) end
  return pipe_channel(ctx, kind)
end

function E.run(ctx)
  local pt, p = ctx.pt, ctx.params
  local now = pt.now
  for _, mech in ipairs(E.MECHS) do
    for _, kind in ipairs({ "process", "thread" }) do
      local label = ("%s between %s"):format(E.MECH_TEXT[mech], kind == "process" and "processes" or "threads")
      local ch, err = open_channel(ctx, mech, kind)
      for _, size in ipairs(p.sizes) do
        local meta = { mech = mech, kind = kind, size = size }
        local payload = string.rep("x", size)
        local n = size <= 4096 and p.n_small or p.n_big
        local key = ("%s/%s/%d"):format(mech, kind, size)
        if not ch then
          ctx:fail("rtt/" .. key, meta, err, "s")
          ctx:fail("tput/" .. key, meta, err, "B/s")
        else
          ctx:time("rtt/" .. key, meta, { n = n, warmup = p.warmup, label = ("%s, %s round trip"):format(label, fmt(size, "B")),
                                          stop_after_failures = 3, budget = p.budget },
            function() return ch.rtt(payload) end)
          local count = math.max(p.tput_min, math.min(p.tput_max, math.floor(p.tput_bytes / size)))
          -- no more messages than about tput_s seconds' worth at the
          -- measured round trip (a stalling mechanism must not stall the lab)
          local rtt = util.summary(ctx.results, "rtt/" .. key).median
          if rtt and rtt > 0 then count = math.max(p.tput_min, math.min(count, math.floor(p.tput_s / rtt))) end
          ctx:sample("tput/" .. key, meta, { n = p.tput_n, warmup = 0, unit = "B/s", stop_after_failures = 2, budget = p.budget,
                                             label = ("%s, %s stream"):format(label, fmt(size, "B")) },
            function()
              local t0 = now()
              local ok, e = ch.sink(payload, count)
              if not ok then return nil, e end
              return size * count / (now() - t0)
            end)
        end
      end
      if ch then
        local ok, e = ch.stop()
        if ok ~= true then ctx:fail(("stop/%s/%s"):format(mech, kind), {}, e) end
      end
    end
  end
  -- shared counter: C workers increment one key of one shared table
  local W = math.max(2, pt.cpu_count())
  ctx:set("counter_workers", W)
  for _, kind in ipairs({ "process", "thread" }) do
    ctx:sample("counter/" .. kind, { kind = kind, workers = W }, { n = p.counter_n, unit = "/s", stop_after_failures = 2,
                                                                   label = ("shared counter, %d %s"):format(W, util.plural(kind)) },
      function()
        local ok, st = pcall(pt.shared_table, { c = 0 })
        if not ok then return nil, "pt.shared_table: " .. tostring(st) end
        local at = now() + 0.05 + 0.01 * W
        local ws = {}
        for i = 1, W do
          local okw, w = pcall(ctx.spawn, ctx, kind, counter_worker, st, p.counter_m, at)
          if not okw then return nil, "spawn: " .. tostring(w) end
          ws[i] = w
        end
        local t0, t1 = math.huge, -math.huge
        for i = 1, W do
          local okj, a, b = ctx:join(ws[i], 60)
          if okj ~= true then return nil, a end
          t0 = math.min(t0, a); t1 = math.max(t1, b)
        end
        if st.c ~= W * p.counter_m then return nil, ("lost increments: %s of %d"):format(tostring(st.c), W * p.counter_m) end
        return W * p.counter_m / (t1 - t0)
      end)
  end
end

-- ---- verdict -------------------------------------------------------------------

local function sum_of(results, what, mech, kind, size)
  return util.summary(results, ("%s/%s/%s/%d"):format(what, mech, kind, size))
end

local function med(results, what, mech, kind, size)
  return sum_of(results, what, mech, kind, size).median
end

-- sizes where both IPC and shared variables were measured, with ratios
local function ratios(results)
  local pts = {}
  for _, size in ipairs(results.params.sizes or {}) do
    local ipc = sum_of(results, "rtt", "pipe", "process", size)
    local shv = sum_of(results, "rtt", "table", "thread", size)
    if ipc.median and shv.median and shv.median > 0 then
      pts[#pts + 1] = { size = size, ipc = ipc.median, shv = shv.median, r = ipc.median / shv.median,
                        slower = stats.versus(ipc, shv, E.SLOWER), twice = stats.versus(ipc, shv, 2) }
    end
  end
  return pts
end
E.ratios = ratios

local function ranges(pts, pred, sep)
  -- contiguous runs of sizes where pred holds, as text
  local out, start, prev = {}, nil, nil
  for i, q in ipairs(pts) do
    if pred(q) then
      start = start or q.size; prev = q.size
    end
    if (not pred(q) or i == #pts) and start then
      local last = pred(q) and q.size or prev
      if start == pts[1].size and last == pts[#pts].size then out[#out + 1] = "all sizes"
      elseif start == last then out[#out + 1] = fmt(start, "B")
      elseif start == pts[1].size then out[#out + 1] = "up to " .. fmt(last, "B")
      elseif last == pts[#pts].size then out[#out + 1] = fmt(start, "B") .. " and above"
      else out[#out + 1] = fmt(start, "B") .. " to " .. fmt(last, "B") end
      start = nil
    end
  end
  return table.concat(out, sep or ", ")
end

function E.verdict(results)
  local v = {}
  local pts = ratios(results)
  local sizes = results.params.sizes or {}
  local first, last = sizes[1], sizes[#sizes]
  local function side(mech, kind)
    local a, b = first and med(results, "rtt", mech, kind, first), last and med(results, "rtt", mech, kind, last)
    local t = last and med(results, "tput", mech, kind, last)
    if not a and not b then return nil end
    return ("%s round trip %s (%s) to %s (%s)%s"):format(E.MECH_TEXT[mech], fmt(a, "s"), fmt(first, "B"), fmt(b, "s"), fmt(last, "B"),
      t and (", stream " .. fmt(t, "B/s")) or "")
  end
  local cp, ct = util.summary(results, "counter/process").median, util.summary(results, "counter/thread").median
  v.process = side("pipe", "process")
  v.thread = side("table", "thread")
  if cp then v.process = (v.process and v.process .. "; " or "") .. "shared counter " .. fmt(cp, "/s") end
  if ct then v.thread = (v.thread and v.thread .. "; " or "") .. "shared counter " .. fmt(ct, "/s") end
  if #pts == 0 then
    v.verdict = "not measured"
    v.condition = "no size measured for both a pipe between processes and a shared table between threads"
    return v
  end
  local slower, noisy = 0, {}
  for _, q in ipairs(pts) do
    if q.slower == "above" then slower = slower + 1
    elseif q.slower == "within noise" then noisy[#noisy + 1] = q end
  end
  local twice = ranges(pts, function(q) return q.twice == "above" end, " or ")
  local noise = #noisy > 0 and ("; within noise at %s"):format(ranges(pts, function(q) return q.slower == "within noise" end)) or ""
  local rmin, rmax = math.huge, -math.huge
  for _, q in ipairs(pts) do rmin = math.min(rmin, q.r); rmax = math.max(rmax, q.r) end
  local extra = (twice ~= "" and ("; the pipe takes 2× the shared table or more for %s"):format(twice)
                             or "; the pipe never takes 2× the shared table outside the noise") .. noise
  if #noisy == #pts then
    v.verdict = "not measured"
    v.condition = ("within noise at every size (ratios %.2f–%.2f×)"):format(rmin, rmax)
  elseif slower + #noisy == #pts then
    v.verdict = "holds"
    v.condition = ("IPC over a pipe is %.1f–%.1f× slower per round trip than a shared table between threads at every size outside the noise%s"):format(rmin, rmax, extra)
  elseif slower == 0 then
    v.verdict = "contradicted"
    v.condition = ("a pipe between processes is not %g× slower than a shared table between threads outside the noise at any size (ratios %.2f–%.2f×)%s"):format(E.SLOWER, rmin, rmax, noise)
  else
    v.verdict = "conditional"
    v.condition = ("messages are %s: there IPC is at least %g× slower outside the noise (ratios %.3g–%.3g× over all sizes)%s"):format(
      ranges(pts, function(q) return q.slower == "above" end, " or "), E.SLOWER, rmin, rmax, extra)
  end
  -- mechanism or kind?  the same mechanism between processes against
  -- threads: sizes where one kind is 1.3x the other outside the noise
  local kind_gap, measured = {}, 0
  for _, mech in ipairs(E.MECHS) do
    for _, size in ipairs(sizes) do
      local a, b = sum_of(results, "rtt", mech, "process", size), sum_of(results, "rtt", mech, "thread", size)
      if a.median and b.median then
        measured = measured + 1
        if stats.versus(a, b, 1.3) == "above" or stats.versus(b, a, 1.3) == "above" then
          kind_gap[#kind_gap + 1] = ("%s at %s"):format(E.MECH_TEXT[mech], fmt(size, "B"))
        end
      end
    end
  end
  local kind_text
  if measured == 0 then
    kind_text = " The same mechanism was not measured on both kinds of worker."
  elseif #kind_gap == 0 then
    kind_text = " The same mechanism between processes and between threads never differed by 1.3× outside the noise."
    v.condition = v.condition .. "; the mechanism decides, not the kind of worker (each mechanism costs the same between processes and between threads)"
  else
    kind_text = (" The kind of worker matters too: the same mechanism differed by 1.3× or more between processes and threads for %s."):format(table.concat(kind_gap, ", "))
  end
  local counter = (cp and ct) and (", and shared-counter increments ran at %s with processes against %s with threads"):format(fmt(cp, "/s"), fmt(ct, "/s")) or ""
  v.reading = ("A round trip through a pipe between processes took %.3g–%.3g× as long as a handoff through a shared table between threads%s.%s"):format(
    rmin, rmax, counter, kind_text)
  return v
end

function E.table(results)
  local sizes = results.params.sizes or {}
  local rows = {}
  local function median_cell(what, mech, kind, size, unit)
    local s = util.summary(results, ("%s/%s/%s/%d"):format(what, mech, kind, size))
    if not s.median then return s.failed > 0 and ("failed (%d)"):format(s.failed) or "—" end
    return fmt(s.median, unit)
  end
  for _, size in ipairs(sizes) do
    local ipc, shv = med(results, "rtt", "pipe", "process", size), med(results, "rtt", "table", "thread", size)
    rows[#rows + 1] = { fmt(size, "B"), median_cell("rtt", "pipe", "process", size, "s"), median_cell("rtt", "pipe", "thread", size, "s"),
      median_cell("rtt", "table", "process", size, "s"), median_cell("rtt", "table", "thread", size, "s"),
      (ipc and shv) and ("%.3g×"):format(ipc / shv) or "—" }
  end
  local t1 = { caption = "Round-trip latency (median):",
               header = { "message", "pipe, processes", "pipe, threads", "shared table, processes", "shared table, threads", "IPC / shared variables" },
               rows = rows }
  local rows2 = {}
  for _, size in ipairs(sizes) do
    rows2[#rows2 + 1] = { fmt(size, "B"), median_cell("tput", "pipe", "process", size, "B/s"), median_cell("tput", "pipe", "thread", size, "B/s"),
      median_cell("tput", "table", "process", size, "B/s"), median_cell("tput", "table", "thread", size, "B/s") }
  end
  local t2 = { caption = "Throughput, one way (median):",
               header = { "message", "pipe, processes", "pipe, threads", "shared table, processes", "shared table, threads" }, rows = rows2 }
  local cps, cts = util.summary(results, "counter/process"), util.summary(results, "counter/thread")
  local t3 = { caption = ("Shared counter, %s workers incrementing one key (median, p10 – p90):"):format(tostring(results.data.counter_workers or "?")),
               header = { "kind", "increments per second" },
               rows = { { "processes", format.spread(cps, "/s") }, { "threads", format.spread(cts, "/s") } } }
  return { t1, t2, t3 }
end

function E.charts(results)
  local colors = { process = "#1f77b4", thread = "#d62728" }
  local function series(what)
    local out = {}
    for _, mech in ipairs(E.MECHS) do
      for _, kind in ipairs({ "process", "thread" }) do
        local pts = {}
        for _, size in ipairs(results.params.sizes or {}) do
          local s = util.summary(results, ("%s/%s/%s/%d"):format(what, mech, kind, size))
          if s.median then pts[#pts + 1] = { x = size, y = s.median, lo = s.p10, hi = s.p90 } end
        end
        out[#out + 1] = { name = ("%s, %s"):format(E.MECH_TEXT[mech], kind == "process" and "processes" or "threads"), points = pts,
                          color = colors[kind], dash = mech == "pipe" }
      end
    end
    return out
  end
  return {
    { file = "communication-latency.svg", title = "Round-trip latency against message size",
      subtitle = "echo worker; median, bars p10–p90; dashed: pipe, solid: shared table",
      x = { label = "message size", unit = "B", log = true },
      y = { label = "round-trip latency", unit = "s", log = true },
      series = series("rtt") },
    { file = "communication-throughput.svg", title = "One-way throughput against message size",
      subtitle = "stream of messages to a counting worker; median, bars p10–p90",
      x = { label = "message size", unit = "B", log = true },
      y = { label = "throughput", unit = "B/s", log = true },
      series = series("tput") },
  }
end

return E
