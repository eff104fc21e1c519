-- backend: a small HTTP/1.1 server on 127.0.0.1 whose requests are handled
-- by a pool of N threads or by N pre-forked processes, under a closed-loop
-- load; then one handler crashes (a real SIGSEGV) in the middle of the load.
--
-- The same code serves on both sides.  A server process (sacrificial, so
-- the lab survives a crash that takes a thread pool down) binds the
-- listening socket (LuaSocket), then makes pt.pool(kind, N) and submits one
-- long-running `serve` task per worker: every worker accepts on the one
-- listening socket (threads share it; forked processes inherit it) and
-- handles a request at a time: read it, do a fixed amount of CPU work,
-- count it in a shared table, answer, close.  The server process
-- supervises: a serve task that ended (its process worker died and was
-- replaced by the pool) is submitted again.
--
-- The load: wrk (Debian's `wrk`) when installed, else a built-in closed-loop
-- client in worker processes: `phases_before` phases of `phase_s` seconds,
-- then a crash phase that sets the crash flag `crash_delay` seconds in (the
-- next request any handler takes runs pt.fault("segv") after reading it:
-- that is the request in flight), then `phases_after` phases.  wrk runs whole
-- seconds and cannot split a run at the crash, hence the separate phases.
local util = require "procthread.lab.util"
local claims = require "procthread.lab.claims"
local stats = require "procthread.lab.stats"
local format = require "procthread.lab.format"
local fmt, cell = format.value, format.cell

local E = {
  name = "backend",
  title = "an HTTP server on a thread pool versus pre-forked worker processes, and a crash under load",
  aspect = claims.by_name.backend.aspect,
  claim = claims.by_name.backend,
  params = {
    -- workers: pool size; connections: concurrent clients of the closed
    -- loop; work: iterations of the per-request CPU loop; client: "auto"
    -- (wrk when installed), "wrk" or "builtin"
    full = { workers = 4, connections = 8, work = 20000, phase_s = 3, phases_before = 2, phases_after = 2,
             crash_delay = 0.5, client = "auto" },
    quick = { workers = 4, connections = 4, work = 20000, phase_s = 1, phases_before = 1, phases_after = 1,
              crash_delay = 0.25, client = "auto" },
    tiny = { workers = 2, connections = 2, work = 2000, phase_s = 1, phases_before = 1, phases_after = 1,
             crash_delay = 0.2, client = "auto" },
  },
  -- a server "serves on" when its throughput after the crash is at least
  -- this share of before; it "went down" at or below DOWN of before
  SERVE_ON = 0.5,
  DOWN = 0.1,
  -- a crashing worker may lose the request it was handling, nothing more
  IN_FLIGHT = 1,
}

E.rule = ("Each side serves the same closed-loop load in phases: before, one crash phase (a handler crashes with SIGSEGV " ..
  "early in it), after. rps = successful responses per second (median over the phases of a kind), lost = failed requests " ..
  "(socket errors and non-2xx) in the crash and after phases. A server serves on when rps after >= %g x rps before, and " ..
  "went down when rps after <= %g x rps before, by the noise rule: the p10 – p90 of the phases after lie wholly above " ..
  "(serves on) or wholly below (down) that factor times the p10 – p90 of the phases before; overlapping is within noise " ..
  "(not measured). " ..
  "Holds: the process server served on and lost at most %d request (the one in flight), and the thread-pool server went down. " ..
  "Holds only if clients retry: the process server served on but lost more. Contradicted: the process server did not serve " ..
  "on, or the thread-pool server did not go down. Not measured: a side served nothing before the crash, or the crash did not happen."):format(
  E.SERVE_ON, E.DOWN, E.IN_FLIGHT)

local KINDS = { "process", "thread" }

-- ---- the server (runs in pool workers: no module upvalues) ---------------

-- One worker's accept loop on the shared listening socket `fd`.
local function serve(fd, st, work, deadline)
  local pt = require "procthread"
  local socket = require "socket"
  local srv = socket.tcp()
  srv:close()                    -- drop its own fd; adopt the listening one
  srv:setfd(fd)
  assert(srv:listen(256))        -- already listening: this only makes it a server object
  srv:settimeout(0.1)
  local handled = 0
  local ok, err = pcall(function()
    while not st.stop and pt.now() < deadline do
      local c = srv:accept()
      if c then
        c:settimeout(2)
        local line = c:receive("*l")
        if line then
          repeat local h = c:receive("*l") until not h or h == ""
          -- the crash, once, in the middle of a request
          if st.crash == 1 and pt.cas(st, "crash", 1, 0) then pt.fault("segv") end
          local x = 0
          for i = 1, work do x = x + i % 7 end
          pt.add(st, "served", 1)
          local body = "ok " .. x .. "\n"
          c:send("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " .. #body ..
            "\r\nConnection: close\r\n\r\n" .. body)
          handled = handled + 1
        end
        c:close()
      end
    end
  end)
  srv:setfd(-1)                  -- the listening socket belongs to the server process
  if not ok then error(err, 0) end
  return handled
end

-- The server process: socket, pool, one serve task per worker, resubmitted
-- when a worker dies.  Returns restarts, deaths, reasons, clean close.
local function server_main(kind, n, st, work, ready, deadline)
  local pt = require "procthread"
  local okr, socket = pcall(require, "socket")
  if not okr then ready:send(nil, "LuaSocket is not installed (Debian: lua-socket): " .. tostring(socket)); return nil end
  local srv, err = socket.bind("127.0.0.1", 0, 256)
  if not srv then ready:send(nil, "bind: " .. tostring(err)); return nil end
  local _, port = srv:getsockname()
  local fd = srv:getfd()
  local pool = pt.pool(kind, n)
  local fs = {}
  for i = 1, n do fs[i] = pool:submit(serve, fd, st, work, deadline) end
  ready:send(tonumber(port))
  local restarts, reasons = 0, {}
  while not st.stop and pt.now() < deadline do
    for i = 1, n do
      if fs[i]:done() and not st.stop then
        local ok, e = fs[i]:get(0)
        if not ok and #reasons < 5 then reasons[#reasons + 1] = tostring(e):match("^[^\n]*") end
        restarts = restarts + 1
        fs[i] = pool:submit(serve, fd, st, work, deadline)
      end
    end
    pt.sleep(0.01)
  end
  local deaths = pool:stats().deaths
  local clean = pool:close(10) == true
  srv:close()
  return restarts, deaths, reasons, clean
end

-- ---- the load ------------------------------------------------------------

-- The built-in client: a closed loop of GET requests until stop_at.
local function client_main(port, stop_at)
  local pt = require "procthread"
  local socket = require "socket"
  local ok, lat, errs, nerr = 0, {}, {}, 0
  while pt.now() < stop_at do
    local t0 = pt.now()
    local c = socket.tcp()
    c:settimeout(2)
    local r, e = c:connect("127.0.0.1", port)
    if r then
      r, e = c:send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
      if r then
        local data
        data, e = c:receive("*a")
        if data and data:match("^HTTP/1%.1 200 ") then r = true else r, e = nil, e or "no response" end
      end
    end
    c:close()
    if r then
      ok = ok + 1
      if #lat < 50000 then lat[#lat + 1] = pt.now() - t0 end
    else
      nerr = nerr + 1
      e = tostring(e)
      errs[e] = (errs[e] or 0) + 1
      pt.sleep(0.005)              -- a dead server must not turn the loop into a spin
    end
  end
  return ok, nerr, lat, errs
end

local function have_wrk()
  return util.execute("command -v wrk >/dev/null 2>&1")
end

local function seconds(v, unit)
  v = tonumber(v)
  if not v then return nil end
  if unit == "us" then return v * 1e-6 elseif unit == "ms" then return v * 1e-3
  elseif unit == "s" then return v elseif unit == "m" then return v * 60 end
  return nil
end

-- Parse wrk's report (--latency).  Returns a phase record or nil, reason.
function E.parse_wrk(out)
  if out:match("unable to connect") then
    return { ok = 0, errors = nil, refused = true, duration = nil }
  end
  local req, dur, dunit = out:match("(%d+) requests in ([%d%.]+)(%a+)")
  if not req then return nil, "wrk: no report (" .. (out:match("[^\n]*") or "") .. ")" end
  local r = { requests = tonumber(req), duration = seconds(dur, dunit) }
  local non2xx = tonumber(out:match("Non%-2xx or 3xx responses:%s*(%d+)")) or 0
  local sc, sr, sw, stmo = out:match("Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  r.errors = non2xx + (tonumber(sc) or 0) + (tonumber(sr) or 0) + (tonumber(sw) or 0) + (tonumber(stmo) or 0)
  r.ok = r.requests - non2xx
  local p50v, p50u = out:match("\n%s*50%%%s+([%d%.]+)(%a+)")
  local p99v, p99u = out:match("\n%s*99%%%s+([%d%.]+)(%a+)")
  if r.ok > 0 then
    r.p50 = seconds(p50v, p50u)
    r.p99 = seconds(p99v, p99u)
  end
  return r
end

-- One phase of load on `port` for p.phase_s seconds; `on_crash` (if any)
-- runs p.crash_delay seconds in.  Returns { ok, errors, duration, p50, p99 }.
local function load_phase(ctx, port, client, on_crash)
  local pt, p = ctx.pt, ctx.params
  if client == "wrk" then
    local cmd = ("timeout -k 2 %d wrk -t1 -c%d -d%ds --latency --timeout 2s http://127.0.0.1:%d/ 2>&1"):format(
      p.phase_s + 20, p.connections, p.phase_s, port)
    io.stdout:flush(); io.stderr:flush()
    local f = io.popen(cmd)
    if not f then return nil, "cannot run wrk" end
    if on_crash then pt.sleep(p.crash_delay); on_crash() end
    local out = f:read("*a")
    f:close()
    local r, err = E.parse_wrk(out)
    if r and not r.duration then r.duration = p.phase_s end
    return r, err
  end
  local t0 = pt.now()
  local stop_at = t0 + p.phase_s
  local ws = {}
  io.stdout:flush(); io.stderr:flush()
  for i = 1, p.connections do
    local ok, w = pcall(ctx.spawn, ctx, "process", client_main, port, stop_at)
    if ok then ws[#ws + 1] = w end
  end
  if #ws == 0 then return nil, "cannot start the client processes" end
  if on_crash then pt.sleep(p.crash_delay); on_crash() end
  local r = { ok = 0, errors = 0, kinds = {} }
  local lat = {}
  local failed
  for _, w in ipairs(ws) do
    local a = util.pack(ctx:join(w, p.phase_s + 30))
    if a[1] == true then
      r.ok = r.ok + a[2]
      r.errors = r.errors + a[3]
      for _, v in ipairs(a[4]) do lat[#lat + 1] = v end
      for k, v in pairs(a[5]) do r.kinds[k] = (r.kinds[k] or 0) + v end
    else
      failed = tostring(a[2])
    end
  end
  r.duration = pt.now() - t0
  if failed and r.ok == 0 then return nil, "client: " .. failed end
  table.sort(lat)
  r.p50 = stats.quantile_sorted(lat, 0.5)
  r.p99 = stats.quantile_sorted(lat, 0.99)
  return r
end

-- One request, to see that the server answers.
local function probe(port)
  local socket = require "socket"
  local c = socket.tcp()
  c:settimeout(5)
  local r, e = c:connect("127.0.0.1", port)
  if r then r, e = c:send("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") end
  local data
  if r then data, e = c:receive("*a") end
  c:close()
  if data and data:match("^HTTP/1%.1 200 ") then return true end
  return nil, "the server did not answer: " .. tostring(e or "bad response")
end

-- ---- the experiment --------------------------------------------------------

local function run_kind(ctx, kind, client)
  local pt, p = ctx.pt, ctx.params
  local nph = p.phases_before + 1 + p.phases_after
  local function side_of_phase(i)
    if i <= p.phases_before then return "before" end
    if i == p.phases_before + 1 then return "crash" end
    return "after"
  end
  local function fail_all(err)
    for i = 1, nph do
      local side = side_of_phase(i)
      ctx:fail(("rps/%s/%s"):format(kind, side), { kind = kind, side = side, phase = i }, err, "/s")
    end
  end
  local st = pt.shared_table({ served = 0, crash = 0 })
  local ready = pt.pipe()
  local deadline = pt.now() + nph * p.phase_s + 60
  io.stdout:flush(); io.stderr:flush()
  local okspawn, server = pcall(ctx.spawn, ctx, "process", server_main, kind, p.workers, st, p.work, ready, deadline)
  ready:close_write()
  if not okspawn then ready:close(); fail_all("spawn: " .. tostring(server)); return end
  local port, perr = ready:recv(30)
  ready:close()
  local info = { kind = kind }
  ctx.results.data.server = ctx.results.data.server or {}
  ctx.results.data.server[kind] = info
  local timeline = {}
  ctx.results.data.timeline = ctx.results.data.timeline or {}
  ctx.results.data.timeline[kind] = timeline
  local ok, err = pcall(function()
    if not port then error("the server did not start: " .. tostring(perr), 0) end
    local pok, pe = probe(port)
    if not pok then error(pe, 0) end
    local crash_time
    for i = 1, nph do
      local side = side_of_phase(i)
      local meta = { kind = kind, side = side, phase = i }
      ctx:update(("%s server, %s"):format(kind, side == "crash" and "the crash" or side .. " the crash"), i, nph)
      local on_crash
      if i == p.phases_before + 1 then
        on_crash = function() st.crash = 1; crash_time = (i - 1) * p.phase_s + p.crash_delay end
      end
      local r, e = load_phase(ctx, port, client, on_crash)
      if not r then
        ctx:fail(("rps/%s/%s"):format(kind, side), meta, e, "/s")
      else
        local rps = r.ok / (r.duration or p.phase_s)
        ctx:add(("rps/%s/%s"):format(kind, side), meta, rps, "/s")
        if r.p50 then ctx:add(("p50/%s/%s"):format(kind, side), meta, r.p50, "s") end
        if r.p99 then ctx:add(("p99/%s/%s"):format(kind, side), meta, r.p99, "s") end
        if r.errors then
          ctx:add(("errors/%s/%s"):format(kind, side), meta, r.errors, "requests")
        else
          ctx:fail(("errors/%s/%s"):format(kind, side), meta, "every connection was refused (count unknown)", "requests")
        end
        timeline[#timeline + 1] = { phase = i, t = (i - 0.5) * p.phase_s, rps = rps, p50 = r.p50, p99 = r.p99,
                                    errors = r.errors, ok = r.ok, refused = r.refused }
      end
    end
    info.crash_time = crash_time
  end)
  -- stop the server (bounded), whatever happened above
  info.crashed = st.crash == 0 and info.crash_time ~= nil
  st.stop = 1
  local a = util.pack(ctx:join(server, 20))
  info.survived = a[1] == true
  if a[1] == true then
    info.restarts, info.deaths, info.reasons, info.clean_close = a[2], a[3], a[4], a[5]
  else
    info.ended = tostring(a[2])
  end
  info.served = st.served
  if not ok then
    fail_all(err)
    info.error = tostring(err)
  end
  st = nil
  collectgarbage()
end

E.NO_SOCKET = "LuaSocket is not installed (Debian: lua-socket)"

function E.run(ctx)
  local p = ctx.params
  local okso = pcall(require, "socket")
  local client = p.client or "auto"
  if client == "auto" then client = have_wrk() and "wrk" or "builtin" end
  ctx:set("client", client)
  if not okso then
    ctx:set("missing", E.NO_SOCKET)
    for _, kind in ipairs(KINDS) do
      ctx:fail(("rps/%s/before"):format(kind), { kind = kind }, E.NO_SOCKET, "/s")
    end
    return
  end
  for _, kind in ipairs(KINDS) do run_kind(ctx, kind, client) end
end

-- ---- verdict, table, charts ---------------------------------------------------

local function sum(results, key)
  local s = results.series[key]
  if not s or #s.samples == 0 then return nil end
  local t = 0
  for _, v in ipairs(s.samples) do t = t + v end
  return t
end

local function side_of(results, kind)
  local b = util.summary(results, ("rps/%s/before"):format(kind))
  local a = util.summary(results, ("rps/%s/after"):format(kind))
  local pb = util.summary(results, ("p99/%s/before"):format(kind))
  local pa = util.summary(results, ("p99/%s/after"):format(kind))
  local lc, la = sum(results, ("errors/%s/crash"):format(kind)), sum(results, ("errors/%s/after"):format(kind))
  local lost = (lc or la) and ((lc or 0) + (la or 0)) or nil
  local es = results.series[("errors/%s/after"):format(kind)]
  local esc = results.series[("errors/%s/crash"):format(kind)]
  local refused = (es and es.failed > 0) or (esc and esc.failed > 0)
  return { before = b.median, after = a.median, sb = b, sa = a, p99_before = pb.median, p99_after = pa.median,
           lost = lost, refused = refused }
end
E.side_of = side_of

local function describe_side(s)
  local t = ("%s, p99 %s before; %s after the crash"):format(fmt(s.before, "/s"), cell(s.p99_before, "s"),
    cell(s.after, "/s"))
  if s.lost then t = t .. (", %d failed"):format(s.lost) end
  if s.refused then t = t .. ", connections refused" end
  return t
end

function E.verdict(results)
  local P, T = side_of(results, "process"), side_of(results, "thread")
  local v = {}
  local missing = results.data and results.data.missing
  if missing then return { verdict = "not measured", condition = missing } end
  if not P.before or not T.before or P.before <= 0 or T.before <= 0 then
    return { verdict = "not measured",
             condition = ("a server served nothing before the crash (processes: %s, threads: %s)"):format(
               P.before and fmt(P.before, "/s") or "no sample", T.before and fmt(T.before, "/s") or "no sample") }
  end
  local server = (results.data and results.data.server) or {}
  for _, kind in ipairs(KINDS) do
    local info = server[kind] or {}
    if not info.crashed then
      return { verdict = "not measured", condition = ("no handler of the %s server crashed (the crash flag was not taken)"):format(kind) }
    end
  end
  if not P.after or not T.after then
    return { verdict = "not measured", condition = "a side has no sample after the crash" }
  end
  v.process = describe_side(P)
  v.thread = describe_side(T)
  local ratio = T.before / P.before
  -- the noise rule: the phases' spreads decide, never medians alone
  local on_state, down_state = stats.versus(P.sa, P.sb, E.SERVE_ON), stats.versus(T.sa, T.sb, E.DOWN)
  if on_state == "within noise" or down_state == "within noise" then
    v.verdict = "within noise"
    v.condition = ("the phases after the crash overlap the mark (processes %s after against %s before, %g× mark; thread pool %s against %s, %g× mark)"):format(
      fmt(P.after, "/s"), fmt(P.before, "/s"), E.SERVE_ON, fmt(T.after, "/s"), fmt(T.before, "/s"), E.DOWN)
    return v
  end
  local serves_on = on_state == "above"
  local down = down_state == "below"
  local lost = P.lost or 0
  if not serves_on then
    v.verdict = "contradicted"
    v.condition = ("the process server did not serve on after one worker crashed: %s after against %s before (< %g×)"):format(
      fmt(P.after, "/s"), fmt(P.before, "/s"), E.SERVE_ON)
  elseif not down then
    v.verdict = "contradicted"
    v.condition = ("the thread-pool server kept serving after a handler crashed: %s after against %s before"):format(
      fmt(T.after, "/s"), fmt(T.before, "/s"))
  elseif lost <= E.IN_FLIGHT then
    v.verdict = "holds"
    v.condition = ("after one SIGSEGV the pre-forked server served on at %s (%s before) losing %d request%s, while the thread-pool server went down (%s after, %s before); before the crash the thread pool served %.2f× the processes' rate"):format(
      fmt(P.after, "/s"), fmt(P.before, "/s"), lost, lost == 1 and "" or "s", fmt(T.after, "/s"), fmt(T.before, "/s"), ratio)
  else
    v.verdict = "conditional"
    v.condition = ("clients retry: the pre-forked server served on at %s (%s before) but %d requests failed around the crash, more than the %d in flight; the thread-pool server went down (%s after)"):format(
      fmt(P.after, "/s"), fmt(P.before, "/s"), lost, E.IN_FLIGHT, fmt(T.after, "/s"))
  end
  v.reading = ("Before the crash the thread pool served %s with p99 %s and the pre-forked processes %s with p99 %s (thread/process %.2f×). After one handler's SIGSEGV the process server %s, and the thread-pool server %s."):format(
    fmt(T.before, "/s"), cell(T.p99_before, "s"), fmt(P.before, "/s"),
    cell(P.p99_before, "s"), ratio,
    serves_on and ("served on at " .. fmt(P.after, "/s") .. " with " .. lost .. " failed request" .. (lost == 1 and "" or "s"))
      or ("fell to " .. fmt(P.after, "/s")),
    down and ("went down with its whole process (" .. fmt(T.after, "/s") .. " after)") or ("kept serving at " .. fmt(T.after, "/s")))
  return v
end

function E.table(results)
  local rows = {}
  local server = (results.data and results.data.server) or {}
  for _, kind in ipairs(KINDS) do
    for _, side in ipairs({ "before", "crash", "after" }) do
      local r = util.summary(results, ("rps/%s/%s"):format(kind, side))
      local p50 = util.summary(results, ("p50/%s/%s"):format(kind, side))
      local p99 = util.summary(results, ("p99/%s/%s"):format(kind, side))
      local errs = sum(results, ("errors/%s/%s"):format(kind, side))
      local es = results.series[("errors/%s/%s"):format(kind, side)]
      local etext = errs and tostring(errs) or "—"
      if es and es.failed > 0 then etext = etext .. " (+ every connection refused in " .. es.failed .. " phase" .. (es.failed == 1 and "" or "s") .. ")" end
      rows[#rows + 1] = { kind, side == "crash" and "the crash phase" or (side .. " the crash"), cell(r.median, "/s"),
        cell(p50.median, "s"), cell(p99.median, "s"), etext }
    end
  end
  local srows = {}
  for _, kind in ipairs(KINDS) do
    local i = server[kind] or {}
    local outcome
    if i.survived then
      outcome = ("ran to the end; %s worker death%s, %s serve task%s resubmitted"):format(tostring(i.deaths or 0),
        i.deaths == 1 and "" or "s", tostring(i.restarts or 0), i.restarts == 1 and "" or "s")
    else
      outcome = "died: " .. tostring(i.ended or "?")
    end
    srows[#srows + 1] = { kind, i.crashed and ("yes, at t = " .. fmt(i.crash_time, "s")) or "no", outcome,
      tostring(i.served or "?") }
  end
  return {
    { header = { "server", "phase", "requests/s", "p50", "p99", "failed requests" }, rows = rows,
      caption = ("load: %s, %s connections; medians over phases of %s s"):format(tostring(results.data and results.data.client),
        tostring(results.params.connections), tostring(results.params.phase_s)) },
    { header = { "server", "handler crashed", "server process", "requests counted in the shared table" }, rows = srows },
  }
end

function E.charts(results)
  local tl = (results.data and results.data.timeline) or {}
  local p = results.params or {}
  -- the crash time actually recorded (else the planned one)
  local server = (results.data and results.data.server) or {}
  local crash_t = (server.process and server.process.crash_time) or (server.thread and server.thread.crash_time)
    or ((p.phases_before or 1) * (p.phase_s or 1)) + (p.crash_delay or 0)
  local tp, lat = {}, {}
  for _, kind in ipairs(KINDS) do
    local a, b = {}, {}
    for _, r in ipairs(tl[kind] or {}) do
      a[#a + 1] = { x = r.t, y = r.rps }
      if r.p99 then b[#b + 1] = { x = r.t, y = r.p99 } end
    end
    -- a phase's throughput holds for the whole phase: steps, not slopes
    tp[#tp + 1] = { name = kind == "thread" and "thread pool" or "pre-forked processes", points = a, steps = true }
    lat[#lat + 1] = { name = kind == "thread" and "thread pool" or "pre-forked processes", points = b }
  end
  -- the crash, as a dashed vertical line the height of the plot
  local crash = { { x = crash_t, name = "the crash (SIGSEGV)" } }
  local span = ((p.phases_before or 1) + 1 + (p.phases_after or 1)) * (p.phase_s or 1)
  local note = ("crash at t = %s s"):format(fmt(crash_t, "s"):gsub(" s$", ""))
  -- ticks at the phase boundaries (the points sit in the middle of theirs)
  local bounds = {}
  for i = 0, math.floor(span / (p.phase_s or 1) + 0.5) do bounds[#bounds + 1] = i * (p.phase_s or 1) end
  return {
    { file = "backend-throughput.svg", title = "HTTP server throughput, before and after a handler crashes",
      subtitle = ("successful responses per second, closed-loop load (%s), one point per %s s phase"):format(
        tostring(results.data and results.data.client), tostring(p.phase_s)),
      x = { label = "time into the load (s)", min = 0, max = span, ticks = bounds }, y = { label = "throughput", unit = "/s" },
      series = tp, markers = crash, note = note },
    { file = "backend-p99.svg", title = "HTTP server p99 latency, before and after a handler crashes",
      subtitle = "99th percentile of the successful requests of each phase (none once a server is down)",
      x = { label = "time into the load (s)", min = 0, max = span, ticks = bounds }, y = { label = "p99 latency", unit = "s", log = true },
      series = lat, markers = crash, note = note },
  }
end

E.serve, E.server_main, E.client_main = serve, server_main, client_main
return E
