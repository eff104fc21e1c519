-- communication: round-trip latency and throughput over message sizes for
-- what a careful user takes to talk between workers — a channel and a
-- shared-table handoff that blocks in pt.wait (shared variables), a pipe
-- (IPC) — each between threads and between processes, beside their plain-C
-- floors (src/floor.c); and shared-counter increments per second.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"
local format = require "procthread.lab.format"
local fmt = format.value
local stats = require "procthread.lab.stats"

local E = {
  name = "communication",
  title = "latency and throughput: channel, shared table and pipe, between threads and between processes",
  aspect = claims.by_name.communication.aspect,
  claim = claims.by_name.communication,
  params = {
    -- rounds: the samples are taken in this many rounds over every size,
    -- each mechanism in turn, so that a change of load falls on all alike;
    -- a sample is the mean round trip of a batch (see batch_of)
    full = { sizes = { 8, 64, 512, 4096, 32768, 262144, 1048576 }, n = 32, batch = 200, batch_bytes = 4 * 1048576,
             warmup = 2, rounds = 8, floor_n = 16, tput_bytes = 8 * 1048576, tput_min = 16, tput_max = 5000, tput_n = 3,
             ring = 8, counter_m = 200000, counter_n = 5, budget = 8, tput_s = 0.3 },
    quick = { sizes = { 8, 512, 4096, 32768, 1048576 }, n = 12, batch = 50, batch_bytes = 1048576,
              warmup = 1, rounds = 2, floor_n = 6, tput_bytes = 2 * 1048576, tput_min = 8, tput_max = 1000, tput_n = 2,
              ring = 8, counter_m = 30000, counter_n = 3, budget = 1.5, tput_s = 0.1 },
    tiny = { sizes = { 8, 32768 }, n = 4, batch = 2, batch_bytes = 65536,
             warmup = 1, rounds = 2, floor_n = 2, tput_bytes = 65536, tput_min = 4, tput_max = 50, tput_n = 1,
             ring = 4, counter_m = 500, counter_n = 1, budget = 1, tput_s = 0.05 },
  },
  KINDS = { "process", "thread" },
  MECHS = { "channel", "table", "pipe" },
  MECH_TEXT = { channel = "channel", table = "shared table + pt.wait", pipe = "pipe" },
  FLOORS = { shm = "C: memcpy + futex", pipe = "C: pipe write + read" },
  -- sizes up to SMALL bytes are "small messages", the others "large":
  -- a condition is stated per group, never per size
  SMALL = 4096,
  MARGIN = 1.5,   -- "slower": at least this ratio of the medians, outside the noise
}
E.GROUPS = { { name = "small", text = "messages up to " .. fmt(E.SMALL, "B"), cond = "messages are up to " .. fmt(E.SMALL, "B") },
             { name = "large", text = "messages above " .. fmt(E.SMALL, "B"), cond = "messages are above " .. fmt(E.SMALL, "B") } }

E.rule = ("Round trip: the parent hands a message of s bytes to an echo worker and waits for it back; a sample is the mean " ..
  "round trip of a batch; median over samples taken in rounds (every size, each mechanism in turn). Two effects are " ..
  "tested with the noise rule at %gx on the medians' 95%% confidence intervals (a's interval wholly above %g x b's: " ..
  "slower; wholly below: not slower; overlapping: within noise): the mechanism (a pipe against a channel, the same kind " ..
  "of worker) and the kind of worker (processes against threads, the same mechanism: channel, shared table, pipe). " ..
  "Sizes are grouped into messages up to %s and above; an effect is slower in a group when at least half of its " ..
  "comparisons say slower and none says not slower, not slower the other way round, else within noise. Holds: both effects are " ..
  "slower (in some group); holds only if: one of them is, which then decides the cost; contradicted: neither is, and the " ..
  "pipe is not slower (in some group); within noise: neither is slower, and the pipe against the channel is within noise. The C floors (a pipe write and read; memcpy into " ..
  "shared memory and a futex wake) are reported beside, not judged."):format(E.MARGIN, E.MARGIN, fmt(E.SMALL, "B"))

local function group_of(size) return size <= E.SMALL and "small" or "large" end
E.group_of = group_of

-- ---- the echo workers (no upvalues: they cross to threads by copy) --------

-- Over a pipe or a channel (the same calls): echo a message, or count a
-- stream of them.
local function echo_worker(req, resp, idle)
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

-- Through a shared table: the worker sleeps in pt.wait until the parent
-- bumps st.seq, then echoes st.msg into st.reply, or drains a ring of
-- slots s0..s(ring-1) written ahead of st.head.
local function table_worker(st, idle)
  local pt = require "procthread"
  local function await(key, old)
    local ok, err = pt.wait(st, key, old, idle)
    if not ok then error(("wait %s: %s"):format(key, tostring(err)), 0) end
  end
  local seen = 0
  while true do
    await("seq", seen)
    seen = st.seq
    local op = st.op
    if op == "echo" then
      st.reply = st.msg
      st.ack = seen
    elseif op == "sink" then
      local count, ring = st.count, st.ring
      local bytes = 0
      for tail = 0, count - 1 do
        if st.head <= tail then await("head", tail) end
        bytes = bytes + #st["s" .. (tail % ring)]
        st.tail = tail + 1
      end
      st.reply = bytes
      st.ack = seen
    elseif op == "stop" then
      st.ack = seen
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

-- A link to an echo worker: rtt(payload), sink(payload, count), stop().

-- Over two pipes or two channels.
local function message_link(ctx, mech, kind)
  local pt = ctx.pt
  local make = mech == "pipe" and pt.pipe or pt.channel
  local ok1, req = pcall(make)
  if not ok1 or not req then return nil, ("pt.%s: %s"):format(mech, tostring(req)) end
  local ok2, resp = pcall(make)
  if not ok2 or not resp then req:close(); return nil, ("pt.%s: %s"):format(mech, tostring(resp)) end
  local okw, w = pcall(ctx.spawn, ctx, kind, echo_worker, req, resp, 60)
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

-- Through a shared table, both sides blocking in pt.wait.
local function table_link(ctx, kind)
  local pt = ctx.pt
  local ok, st = pcall(pt.shared_table, { seq = 0, ack = 0, head = 0, tail = 0 })
  if not ok then return nil, "pt.shared_table: " .. tostring(st) end
  local okw, w = pcall(ctx.spawn, ctx, kind, table_worker, st, 60)
  if not okw then return nil, "spawn: " .. tostring(w) end
  local seq = 0
  local c = {}
  local function await(key, old)
    local r, err = pt.wait(st, key, old, 10)
    if not r then c.broken = "link given up after a lost answer"; return nil, ("wait %s: %s"):format(key, tostring(err)) end
    return true
  end
  -- every write wakes the table's waiters: write st.op only when it changes
  local last_op
  local function order(op)
    seq = seq + 1
    if op ~= last_op then st.op = op; last_op = op end
    st.seq = seq
    return seq
  end
  function c.rtt(payload)
    if c.broken then return nil, c.broken end
    st.msg = payload
    local s = order("echo")
    local r, err = await("ack", s - 1)
    if not r then return nil, err end
    if #st.reply ~= #payload then return nil, "echo of the wrong size" end
    return true
  end
  function c.sink(payload, count)
    if c.broken then return nil, c.broken end
    local ring = ctx.params.ring
    st.count = count; st.ring = ring; st.head = 0; st.tail = 0
    local s = order("sink")
    for k = 0, count - 1 do
      local tail = st.tail
      if k - tail >= ring then
        local r, err = await("tail", tail)
        if not r then return nil, err end
      end
      st["s" .. (k % ring)] = payload
      st.head = k + 1
    end
    local r, err = await("ack", s - 1)
    if not r then return nil, err end
    if st.reply ~= #payload * count then return nil, "sink counted " .. tostring(st.reply) .. " bytes" end
    for k = 0, ring - 1 do st["s" .. k] = nil end
    return true
  end
  function c.stop()
    order("stop")
    return ctx:join(w, 10)
  end
  return c
end

local function open_link(ctx, mech, kind)
  if mech == "table" then return table_link(ctx, kind) end
  return message_link(ctx, mech, kind)
end

local function kind_text(kind) return kind == "process" and "processes" or "threads" end

local function key_of(what, mech, kind, size) return ("%s/%s/%s/%d"):format(what, mech, kind, size) end

-- ---- running ------------------------------------------------------------------

-- Round trips per sample at `size`: a sample is the mean of a batch, so
-- that one late wake-up moves a sample a little instead of making the
-- spread's tail (params: batch round trips, at most batch_bytes of them).
local function batch_of(p, size)
  return math.max(2, math.min(p.batch, math.floor(p.batch_bytes / size)))
end
E.batch_of = batch_of

-- One round of samples at `size` over every open link, each in turn, then
-- of the C floors.
local function rtt_round(ctx, links, size, round)
  local p, now = ctx.params, ctx.pt.now
  local payload = string.rep("x", size)
  local n, batch = math.ceil(p.n / p.rounds), batch_of(p, size)
  for _, mech in ipairs(E.MECHS) do
    for _, kind in ipairs(E.KINDS) do
      local l = links[mech .. "/" .. kind]
      local key, meta = key_of("rtt", mech, kind, size), { mech = mech, kind = kind, size = size }
      if l.err then
        if round == 1 then ctx:fail(key, meta, l.err, "s") end
      else
        ctx:sample(key, meta, { n = n, warmup = round == 1 and p.warmup or 0, unit = "s", stop_after_failures = 3, budget = p.budget,
                                label = ("%s between %s, %s round trip"):format(E.MECH_TEXT[mech], kind_text(kind), fmt(size, "B")) },
          function()
            local t0 = now()
            for _ = 1, batch do
              local ok, e = l.rtt(payload)
              if not ok then return nil, e end
            end
            return (now() - t0) / batch
          end)
      end
    end
  end
  for _, floor in ipairs({ "shm", "pipe" }) do
    for _, kind in ipairs(E.KINDS) do
      ctx:sample(key_of("floor", floor, kind, size), { floor = floor, kind = kind, size = size },
                 { n = math.ceil(p.floor_n / p.rounds), unit = "s", stop_after_failures = 2,
                   label = ("%s between %s, %s"):format(E.FLOORS[floor], kind_text(kind), fmt(size, "B")) },
        function() return ctx.pt["_floor_" .. floor](size, batch, kind) end)
    end
  end
end

-- Throughput at `size`: a stream of messages to the counting worker.
local function stream(ctx, l, mech, kind, size)
  local p, now = ctx.params, ctx.pt.now
  local key, meta = key_of("tput", mech, kind, size), { mech = mech, kind = kind, size = size }
  if l.err then ctx:fail(key, meta, l.err, "B/s"); return end
  local payload = string.rep("x", size)
  local count = math.max(p.tput_min, math.min(p.tput_max, math.floor(p.tput_bytes / size)))
  -- no more messages than about tput_s seconds' worth at the measured
  -- round trip (a stalling mechanism must not stall the lab)
  local rtt = util.summary(ctx.results, key_of("rtt", mech, kind, size)).median
  if rtt and rtt > 0 then count = math.max(p.tput_min, math.min(count, math.floor(p.tput_s / rtt))) end
  ctx:sample(key, meta, { n = p.tput_n, warmup = 0, unit = "B/s", stop_after_failures = 2, budget = p.budget,
                          label = ("%s between %s, %s stream"):format(E.MECH_TEXT[mech], kind_text(kind), fmt(size, "B")) },
    function()
      local t0 = now()
      local ok, e = l.sink(payload, count)
      if not ok then return nil, e end
      return size * count / (now() - t0)
    end)
end

local function counters(ctx)
  local pt, p, now = ctx.pt, ctx.params, ctx.pt.now
  local W = math.max(2, pt.cpu_count())
  ctx:set("counter_workers", W)
  for _, kind in ipairs(E.KINDS) do
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

function E.run(ctx)
  local links = {}
  for _, mech in ipairs(E.MECHS) do
    for _, kind in ipairs(E.KINDS) do
      local l, err = open_link(ctx, mech, kind)
      links[mech .. "/" .. kind] = l or { err = err }
    end
  end
  -- every size in every round: a burst of other load falls on all alike
  for round = 1, ctx.params.rounds do
    for _, size in ipairs(ctx.params.sizes) do rtt_round(ctx, links, size, round) end
  end
  for _, size in ipairs(ctx.params.sizes) do
    for _, mech in ipairs(E.MECHS) do
      for _, kind in ipairs(E.KINDS) do stream(ctx, links[mech .. "/" .. kind], mech, kind, size) end
    end
  end
  for _, mech in ipairs(E.MECHS) do
    for _, kind in ipairs(E.KINDS) do
      local l = links[mech .. "/" .. kind]
      if l.stop then
        local ok, e = l.stop()
        if ok ~= true then ctx:fail(("stop/%s/%s"):format(mech, kind), {}, e) end
      end
    end
  end
  counters(ctx)
end

-- ---- verdict -------------------------------------------------------------------

local function rtt_of(results, mech, kind, size) return util.summary(results, key_of("rtt", mech, kind, size)) end

-- The comparisons each effect counts at every size: a (the side the claim
-- calls slower) against b, as { mech, kind } pairs.
E.COMPARISONS = {}
for _, kind in ipairs(E.KINDS) do
  E.COMPARISONS[#E.COMPARISONS + 1] = { effect = "mechanism", a = { "pipe", kind }, b = { "channel", kind },
                                        text = ("pipe / channel, %s"):format(kind_text(kind)) }
end
for _, mech in ipairs(E.MECHS) do
  E.COMPARISONS[#E.COMPARISONS + 1] = { effect = "kind", a = { mech, "process" }, b = { mech, "thread" },
                                        text = ("processes / threads, %s"):format(E.MECH_TEXT[mech]) }
end

-- The noise rule on comparison c at size: state ("above", "below",
-- "within noise"; nil: a side missing) and the ratio of the medians.
local function judge(results, c, size)
  local a, b = rtt_of(results, c.a[1], c.a[2], size), rtt_of(results, c.b[1], c.b[2], size)
  return stats.versus_median(a, b, E.MARGIN), a.median and b.median and b.median > 0 and a.median / b.median
end

-- The states of one effect's comparisons, per group: { small = {...}, large = {...} }
local function compare(results, effect)
  local by = { small = {}, large = {} }
  for _, size in ipairs(results.params.sizes or {}) do
    for _, c in ipairs(E.COMPARISONS) do
      local st = c.effect == effect and judge(results, c, size)
      if st then table.insert(by[group_of(size)], st) end
    end
  end
  return by
end

-- A group's state from its comparisons: "slower" when at least half of
-- them say above and none says below, "not slower" the other way round,
-- "within noise" otherwise; nil when nothing was compared.  One size
-- (a comparison per kind or mechanism) that falls into the noise does not
-- change it; one that says the opposite outside the noise does.
local function group_state(states)
  if #states == 0 then return nil end
  local above, below = 0, 0
  for _, s in ipairs(states) do
    if s == "above" then above = above + 1 elseif s == "below" then below = below + 1 end
  end
  if 2 * above >= #states and below == 0 then return "slower" end
  if 2 * below >= #states and above == 0 then return "not slower" end
  return "within noise"
end
E.group_state = group_state

-- { small = state, large = state } of an effect, and the groups where it is `state`
local function states_of(by)
  local st = {}
  for _, g in ipairs(E.GROUPS) do st[g.name] = group_state(by[g.name]) end
  return st
end

local function groups_where(st, state)
  local out = {}
  for _, g in ipairs(E.GROUPS) do if st[g.name] == state then out[#out + 1] = g end end
  return out
end

-- "" when every measured group of st is in gs, else the groups of gs
-- with `sep` before each and `field` ("text" or "cond") of each
local function scope(gs, st, sep, field)
  local measured = 0
  for _, g in ipairs(E.GROUPS) do if st[g.name] then measured = measured + 1 end end
  if #gs == measured then return "" end
  local t = {}
  for _, g in ipairs(gs) do t[#t + 1] = g[field] end
  return sep .. table.concat(t, " and ")
end

local function states_text(st)
  local t = {}
  for _, g in ipairs(E.GROUPS) do if st[g.name] then t[#t + 1] = ("%s: %s"):format(g.text, st[g.name]) end end
  return table.concat(t, "; ")
end
E.states_text = states_text

-- Median round trips of one side, smallest and largest size, with its
-- C floor, as "pipe 45 µs (8 B) – 3.1 ms (1 MiB), C floor 30 µs – 2.6 ms".
local function side_text(results, mech, kind, floor)
  local sizes = results.params.sizes or {}
  local first, last = sizes[1], sizes[#sizes]
  if not first then return nil end
  local a, b = rtt_of(results, mech, kind, first).median, rtt_of(results, mech, kind, last).median
  if not a and not b then return nil end
  local t = ("%s %s (%s) – %s (%s)"):format(E.MECH_TEXT[mech], fmt(a, "s"), fmt(first, "B"), fmt(b, "s"), fmt(last, "B"))
  local fa = util.summary(results, key_of("floor", floor, kind, first)).median
  local fb = util.summary(results, key_of("floor", floor, kind, last)).median
  if fa or fb then t = t .. (", C floor %s – %s"):format(fmt(fa, "s"), fmt(fb, "s")) end
  return t
end

-- The span of the median ratios a/b over the sizes, as "1.1–1.4×"; ka
-- and kb give the series keys at a size.
local function span(results, ka, kb)
  local lo, hi = math.huge, -math.huge
  for _, size in ipairs(results.params.sizes or {}) do
    local a, b = util.summary(results, ka(size)).median, util.summary(results, kb(size)).median
    if a and b and b > 0 then lo = math.min(lo, a / b); hi = math.max(hi, a / b) end
  end
  if lo > hi then return "?" end
  return ("%.2g–%.2g×"):format(lo, hi)
end

-- mechanism a over b (kinds ka, kb)
local function ratio_span(results, ma, ka, mb, kb)
  return span(results, function(size) return key_of("rtt", ma, ka, size) end,
                       function(size) return key_of("rtt", mb, kb, size) end)
end

-- a mechanism over its C floor
local function floor_span(results, mech, kind, floor)
  return span(results, function(size) return key_of("rtt", mech, kind, size) end,
                       function(size) return key_of("floor", floor, kind, size) end)
end

function E.verdict(results)
  local v = {}
  v.process = side_text(results, "pipe", "process", "pipe")
  v.thread = side_text(results, "channel", "thread", "shm")
  local cp, ct = util.summary(results, "counter/process").median, util.summary(results, "counter/thread").median
  if cp then v.process = (v.process and v.process .. "; " or "") .. "shared counter " .. fmt(cp, "/s") end
  if ct then v.thread = (v.thread and v.thread .. "; " or "") .. "shared counter " .. fmt(ct, "/s") end
  local M, K = states_of(compare(results, "mechanism")), states_of(compare(results, "kind"))
  if not (M.small or M.large) then
    v.verdict = "not measured"
    v.condition = "no size measured with both a pipe and a channel between the same kind of worker"
    return v
  end
  local m_yes, k_yes = groups_where(M, "slower"), groups_where(K, "slower")
  local m_no = groups_where(M, "not slower")
  if #m_yes > 0 and #k_yes > 0 then
    v.verdict = "holds"
    v.condition = ("both decide: a pipe is slower than a channel%s, and the same mechanism is slower between processes than between threads%s"):format(
      scope(m_yes, M, " for ", "text"), scope(k_yes, K, " for ", "text"))
  elseif #m_yes > 0 then
    v.verdict = "conditional"
    v.condition = ("processes talk over a pipe%s: the mechanism decides the cost, not the kind of worker (the same mechanism is not slower between processes than between threads outside the noise)"):format(
      scope(m_yes, M, " and ", "cond"))
  elseif #k_yes > 0 then
    v.verdict = "conditional"
    v.condition = ("the workers are processes%s: the kind of worker decides the cost, not the mechanism (a pipe costs what a channel does)"):format(
      scope(k_yes, K, " and ", "cond"))
  elseif #m_no > 0 then
    v.verdict = "contradicted"
    v.condition = "a pipe is not slower than a channel outside the noise, nor are processes slower than threads"
  else
    v.verdict = "within noise"
    v.condition = "a pipe against a channel: the medians' intervals overlap the margin; processes are not slower than threads outside the noise"
  end
  v.reading = ("Mechanism (a pipe against a channel, the same kind of worker): %s. Kind of worker (processes against threads, the same mechanism): %s. " ..
    "Medians: a pipe took %s as long as a channel between processes, %s between threads; processes took %s as long as threads over a channel, %s over a pipe%s. " ..
    "Against the C floors, a channel between threads took %s the memcpy + futex floor, a pipe between processes %s the pipe floor.%s"):format(
    states_text(M), states_text(K),
    ratio_span(results, "pipe", "process", "channel", "process"), ratio_span(results, "pipe", "thread", "channel", "thread"),
    ratio_span(results, "channel", "process", "channel", "thread"), ratio_span(results, "pipe", "process", "pipe", "thread"),
    rtt_of(results, "table", "thread", (results.params.sizes or {})[1] or 0).median
      and (", %s through a shared table with pt.wait"):format(ratio_span(results, "table", "process", "table", "thread")) or "",
    floor_span(results, "channel", "thread", "shm"), floor_span(results, "pipe", "process", "pipe"),
    (cp and ct) and (" Shared-counter increments ran at %s with processes against %s with threads."):format(fmt(cp, "/s"), fmt(ct, "/s")) or "")
  return v
end

-- ---- tables and charts -----------------------------------------------------------

local COLUMNS = {}
for _, mech in ipairs(E.MECHS) do
  for _, kind in ipairs(E.KINDS) do COLUMNS[#COLUMNS + 1] = { what = mech, kind = kind, text = ("%s, %s"):format(E.MECH_TEXT[mech], kind_text(kind)) } end
end
local FLOOR_COLUMNS = {}
for _, floor in ipairs({ "shm", "pipe" }) do
  for _, kind in ipairs(E.KINDS) do FLOOR_COLUMNS[#FLOOR_COLUMNS + 1] = { what = floor, kind = kind, text = ("%s, %s"):format(E.FLOORS[floor], kind_text(kind)) } end
end

local function cell(results, what, col, size, unit)
  local s = util.summary(results, key_of(what, col.what, col.kind, size))
  if not s.median then return s.failed > 0 and ("failed (%d)"):format(s.failed) or "—" end
  return fmt(s.median, unit)
end

local function size_table(results, caption, what, cols, unit)
  local header, rows = { "message" }, {}
  for _, c in ipairs(cols) do header[#header + 1] = c.text end
  for _, size in ipairs(results.params.sizes or {}) do
    local row = { fmt(size, "B") }
    for _, c in ipairs(cols) do row[#row + 1] = cell(results, what, c, size, unit) end
    rows[#rows + 1] = row
  end
  return { caption = caption, header = header, rows = rows }
end

local WORD = { above = "slower", below = "not slower", ["within noise"] = "within noise" }

-- What the verdict counts: each comparison at each size, its ratio of
-- medians and the noise rule's word.
local function comparison_table(results)
  local header, rows = { "message" }, {}
  for _, c in ipairs(E.COMPARISONS) do header[#header + 1] = c.text end
  for _, size in ipairs(results.params.sizes or {}) do
    local row = { fmt(size, "B") }
    for _, c in ipairs(E.COMPARISONS) do
      local st, r = judge(results, c, size)
      row[#row + 1] = st and ("%.2f×, %s"):format(r, WORD[st]) or "—"
    end
    rows[#rows + 1] = row
  end
  return { caption = ("The comparisons the verdict counts (ratio of the medians; noise rule at %g× on their 95 %% intervals):"):format(E.MARGIN),
           header = header, rows = rows }
end

function E.table(results)
  local cps, cts = util.summary(results, "counter/process"), util.summary(results, "counter/thread")
  return {
    size_table(results, "Round-trip latency (median):", "rtt", COLUMNS, "s"),
    comparison_table(results),
    size_table(results, "C floors, round trip (median of batch means):", "floor", FLOOR_COLUMNS, "s"),
    size_table(results, "Throughput, one way (median):", "tput", COLUMNS, "B/s"),
    { caption = ("Shared counter, %s workers incrementing one key (median, p10 – p90):"):format(tostring(results.data.counter_workers or "?")),
      header = { "kind", "increments per second" },
      rows = { { "processes", format.spread(cps, "/s") }, { "threads", format.spread(cts, "/s") } } },
  }
end

function E.charts(results)
  local colors = { channel = "#2ca02c", table = "#9467bd", pipe = "#1f77b4", shm = "#7f7f7f", floorpipe = "#bcbd22" }
  local function series(what, cols, color_of)
    local out = {}
    for _, c in ipairs(cols) do
      local pts = {}
      for _, size in ipairs(results.params.sizes or {}) do
        local s = util.summary(results, key_of(what, c.what, c.kind, size))
        if s.median then pts[#pts + 1] = { x = size, y = s.median, lo = s.p10, hi = s.p90 } end
      end
      if #pts > 0 then out[#out + 1] = { name = c.text, points = pts, color = color_of(c), dash = c.kind == "process" } end
    end
    return out     -- none at all: the chart says "no data"
  end
  local lat = series("rtt", COLUMNS, function(c) return colors[c.what] end)
  for _, s in ipairs(series("floor", FLOOR_COLUMNS, function(c) return c.what == "shm" and colors.shm or colors.floorpipe end)) do
    lat[#lat + 1] = s
  end
  return {
    { file = "communication-latency.svg", title = "Round-trip latency against message size",
      subtitle = "echo worker; median, bars p10–p90; dashed: processes, solid: threads; grey and olive: C floors",
      x = { label = "message size", unit = "B", log = true },
      y = { label = "round-trip latency", unit = "s", log = true },
      series = lat },
    { file = "communication-throughput.svg", title = "One-way throughput against message size",
      subtitle = "stream of messages to a counting worker; median, bars p10–p90; dashed: processes",
      x = { label = "message size", unit = "B", log = true },
      y = { label = "throughput", unit = "B/s", log = true },
      series = series("tput", COLUMNS, function(c) return colors[c.what] end) },
  }
end

return E
