-- procthread.pool: pools of threads or of processes that run tasks.
--
--   local pool = pt.pool("process", 4, { max_tasks = 100 })
--   local f = pool:submit(function(a, b) return a + b end, 1, 2)
--   print(f:get(5))                       --> true  3
--   print(pool:map(function(x) return x * x end, { 1, 2, 3 })[3])  --> 9
--   pool:close()
--
-- How it works.  A task is its function and arguments encoded by the codec
-- (pt.encode) when it is submitted.  The pool pushes it on one task
-- channel; the workers (threads, or processes forked once and reused) take
-- tasks from it themselves and push their answers on one answer channel,
-- which the caller reads whenever it calls the pool: a future's `get`
-- sleeps in the answer channel's `recv` and wakes when an answer lands.
-- Tasks beyond the task channel's room wait in a list of the caller's
-- (or, with `queue`, `submit` waits for room: backpressure).
--
-- Claims.  A worker that takes a task first claims it in a shared table
-- (pt.cas(claims, seq, nil, wid)) and runs it only if that succeeds; the
-- caller cancels a task (future:cancel) or takes it back (below) by the
-- same cas.  Exactly one side wins, so a task either runs or is released
-- (its payload discarded by the caller, who keeps a copy), never both.
--
-- Ends of workers.  Every end of a worker is reported once on the answer
-- channel, after everything that worker sent: a thread worker reports its
-- own end as its last act (it ends only by leaving its loop: max_tasks, a
-- closed task channel); a process worker cannot (SIGKILL), so it holds
-- the write end of a "life" pipe that nothing else holds, and a watcher
-- thread of the pool, sleeping in pt.select over those pipes, sees the
-- end of the pipe when the process ends, however it ends, and reports it.
-- The caller then joins the worker: a clean return is a retirement, any
-- other end a death, which fails the task the worker had claimed.  A task
-- the dead worker had taken from the channel but not yet claimed cannot be
-- seen there, but the channel is FIFO: every task pushed before the ones
-- still in it (#tasks) has been taken, so such a task is found (taken,
-- unanswered, unclaimed), taken back by cas and pushed again.  No wait
-- anywhere has a timer slice: answers and ends wake the caller.
--
-- Documented in docs/api.md (Pools).
local unpack = unpack or table.unpack
local move = table.move

local P = {}

local STOP_WAIT = 5       -- seconds a stopping worker gets before it is killed
local TAKE_WAIT = 20      -- seconds a new process worker's watcher gets to take it
-- The most values a task may return: what the caller's stack takes, with
-- room (Lua 5.2+: a million slots; 5.1 and LuaJIT cannot return as many)
local MAX_RESULTS = 250000
local FOREVER = math.huge

local HERE = debug.getinfo(1, "S").short_src   -- this file, as positions name it

-- Protected as the handles' are: getmetatable answers the kind's name,
-- setmetatable refuses; the codec refuses to copy them (__nocopy): a pool
-- and its futures are the owner's, nothing another worker could use.
local getmt = debug.getmetatable
local Pool = { __metatable = "procthread.Pool", __name = "procthread.Pool", __nocopy = "procthread.Pool" }
Pool.__index = Pool
local Future = { __metatable = "procthread.Future", __name = "procthread.Future", __nocopy = "procthread.Future" }
Future.__index = Future

local function pack(...) return { n = select("#", ...), ... } end
local tpack = table.pack or pack

-- An error raised by a call of this file's, without the position in this
-- file that it came with
local function unplace(err)
  err = tostring(err)
  if err:sub(1, #HERE + 1) == HERE .. ":" then err = err:gsub("^[^:]*:%d+: ", "", 1) end
  return err
end

-- A refused value as errors name it: a number (any NaN "nan": x86 prints
-- 0/0 as "-nan"), else its type.
local function got(v)
  if type(v) ~= "number" then return type(v) end
  return v ~= v and "nan" or tostring(v)
end

-- The error is the caller's: `level` counts from argerr's caller (1).
local function argerr(fname, i, msg, level)
  error(("%s: bad argument #%d (%s)"):format(fname, i, msg), 2 + (level or 1))
end

local function check_timeout(fname, i, t)
  if t ~= nil and (type(t) ~= "number" or t ~= t or t < 0) then
    argerr(fname, i, "timeout must be a number >= 0 or nil, got " ..
      got(t), 2)
  end
end

-- ---- the worker: runs in a thread (copied by the codec) or in a forked
-- process.  It may capture nothing from this module: everything it needs
-- comes in as arguments or is required inside.

local function worker_main(c)
  local loaded, pt = pcall(require, "procthread")
  if not loaded then
    -- a thread whose state cannot load the module (package.path changed
    -- since): nothing of the pool would ever hear of it; it says so (the
    -- handles in c work without the module's Lua side)
    local why = "require \"procthread\" failed: " .. tostring(pt)
    if not c.life then
      c.answers:send("startfail", c.wid, why)
      if c.flags[1] ~= 0 then pcall(c.bell.send, c.bell, true) end
      if c.room then c.room:set() end
    end
    error(why, 0)
  end
  local unpack = table.unpack or _G.unpack   -- not the file's local: no upvalue
  local tasks, answers, claims, flags, bell, room = c.tasks, c.answers, c.claims, c.flags, c.bell, c.room
  local wid, max_tasks, MAX_RESULTS = c.wid, c.max_tasks, c.max_results
  if c.life then
    -- a Ctrl-C at a terminal reaches the whole process group: it is the
    -- caller's to act on (its wait raises; at exit the pool's workers are
    -- stopped), not the tasks'
    pt._ignore_sigint()
    -- this process holds the write end of its life pipe (its end is the
    -- watcher's news) and nothing else of the pool's that it does not use
    c.life:close_read()
    for i = 1, #c.close do pcall(c.close[i].close, c.close[i]) end
  end
  local failed_at
  -- the worker's own frames below the task's function are cut from its
  -- traceback (the initializer's call, a map chunk's loop)
  local src = debug.getinfo(1, "S").short_src
  local here = "\n%s*" .. src:gsub("%p", "%%%0") .. ":%d+: [^\n]*$"
  -- A position in this file that an error came with names a frame of ours
  -- that called the task's function (error itself as the function, or
  -- error(msg, 2) in it): cut, as a worker's join has none there
  local function ours(e)
    local line = e:sub(1, #src + 1) == src .. ":" and tonumber(e:match("^(%d+): ", #src + 2))
    if not line then return e end
    for level = 3, math.huge do
      local info = debug.getinfo(level, "Sl")
      if not info then return e end
      if info.short_src == src and info.currentline == line then
        return e:sub(#src + #tostring(line) + 4)
      end
    end
  end
  local function handler(e)
    if failed_at then failed_at() end
    if type(e) == "string" then e = ours(e)
    elseif type(e) == "number" then e = tostring(e)   -- as join, and lua.c, show it
    elseif type(e) ~= "string" then
      local mt = debug.getmetatable(e)   -- a handle's answers its name
      local ok, s = false, nil
      if type(mt) == "table" and mt.__tostring then ok, s = pcall(tostring, e) end
      -- (5.1's tostring passes on whatever __tostring returned)
      e = ok and type(s) == "string" and s or "(error object is a " .. type(e) .. " value)"
    end
    -- the traceback stops at the task's function, as join's does
    local tb = debug.traceback(e, 2)
    local cut = tb:find("\n%s*%[C%]: in function '?xpcall'?")
    if cut then
      tb = tb:sub(1, cut - 1)
      repeat
        local before = tb
        tb = tb:gsub("\n%s*%(%.%.%.tail calls%.%.%.%)$", ""):gsub("\n%s*%(tail call%): %?$", ""):gsub(here, "")
      until tb == before
    end
    return tb
  end
  -- The codec names a value by its place in the answer message
  -- (message[k]: seq, ok, then the values): `first` is the k of the first
  -- result.  Named as join names it (results[i]).  For a map chunk (`list`:
  -- "values", its results as values; "table", as one table) the second
  -- answer is the index in the chunk of the item whose result it was (0
  -- when none is known).
  local function results_error(err, first, list)
    err = tostring(err):gsub("^[%w_]+: ", "", 1)      -- "send: ", "_send_list: "
    local k, rest = err:match("^message%[(%d+)%](.*)$")
    k = tonumber(k)
    if not k or k < first then return "results: " .. err, 0 end
    if not list then return ("results: results[%d]%s"):format(k - first + 1, rest), 0 end
    if list == "table" then           -- the results as one table: message[first][j]
      local j, more = rest:match("^%[(%d+)%](.*)$")
      if k ~= first or not j then return "results: " .. err, 0 end
      return "results: results[1]" .. more, tonumber(j)
    end
    return "results: results[1]" .. rest, k - first + 1
  end
  local function reply(seq, ok, ...)
    local sent, err = pcall(answers.send, answers, seq, ok, ...)
    if not sent then answers:send(seq, false, (results_error(err, 3)), 0) end
  end
  -- A chunk's results that cannot be sent: the item whose result it was
  -- fails, after those before it (as an error of that item would)
  local function chunk_unsent(seq, r, err, first, list)
    local why, j = results_error(err, first, list)
    local done = {}
    for k = 1, j - 1 do done[k] = r[k] end
    if not pcall(answers.send, answers, seq, false, why, j, done) then
      answers:send(seq, false, why, 0)
    end
  end
  local function ring()
    if flags[1] ~= 0 and pt.add(claims, "rung", 1) == 1 then bell:send(true) end
  end
  local function apply(fn, ...) return fn(...) end
  local function finish(seq, ok, ...)
    if not ok then reply(seq, false, (...))
    elseif select("#", ...) <= MAX_RESULTS then reply(seq, true, ...)
    else
      reply(seq, false, ("results: %d values, more than a task may return (%d)")
        :format(select("#", ...), MAX_RESULTS))
    end
  end
  -- A chunk of a map, run inside one xpcall for all its items.  Its items
  -- come in the task message itself (op, seq, then the payload's values),
  -- decoded onto the stack and taken into a table of their own, R (take):
  -- count, the items, fn (the items first: the decoder's fast pass takes
  -- them); or fn, -count, a table of them (more than the stack holds); or
  -- the payload as a string (it holds references: it decodes only alone).
  -- The results go in place (result k to slot k, whose item was read
  -- already: the table never grows), with the item reached and the count.
  local R, t, at, count
  local function chunk()
    local r = R                          -- a local in the loop: no upvalue load an item
    R = nil
    local a = r[1]
    if type(a) == "string" then
      r = { pt.decode(a) }
      t, a = r, r[1]
    end
    local fn
    if type(a) == "number" then
      count, fn = a, r[a + 2]
      t = r
      for k = 1, count do r[k] = (fn(r[k + 1])) end
    else
      fn, count, r = a, -r[2], r[3]
      t = r
      for k = 1, count do r[k] = (fn(r[k])) end
    end
  end
  -- The item a chunk failed at: its loop's k, read by the error handler
  -- before the stack unwinds (an upvalue set an item cost 27 instructions
  -- of about 1100, callgrind, 5.4).
  function failed_at()
    for level = 3, math.huge do
      local info = debug.getinfo(level, "f")
      if not info then return end
      if info.func == chunk then
        for i = 1, 250 do
          local name, v = debug.getlocal(level, i)
          if not name then return end
          if name == "k" then at = v end
        end
        return
      end
    end
  end
  -- LuaJIT: a trace of that loop is bound to the function it called, and
  -- each chunk brings a new one (decoded afresh), so every call left the
  -- trace (about 2000 instructions an item); interpreted, the loop calls
  -- fn, which is still compiled when it gets hot
  if jit then jit.off(chunk) end
  -- The values of a task message: a map chunk's after op and seq go into
  -- R at once (a table constructor over the stack: the decoder's stores
  -- into a table, ch:_recv_into, cost about 40 instructions an item more)
  local function take(op, seq, ...)
    if op == "map" then R = { ... }; return op, seq end
    return op, seq, ...
  end
  local function run(op, seq, p)
    if op == "call" then
      finish(seq, xpcall(function() return apply(pt.decode(p)) end, handler))
      return
    end
    t, at, count = R, 0, 0
    local ok, err = xpcall(chunk, handler)
    R = nil
    -- the results as values (the codec encodes a list of 1000 integers
    -- about 2x, and decodes it about 3x, faster than a table of them:
    -- callgrind, 5.4), read from the table by _send_list; as a table past
    -- what the stack holds
    if not ok then
      local done = {}                       -- the results before the failing item
      for k = 1, at - 1 do done[k] = t[k] end
      t = nil
      reply(seq, false, err, at, done)
    elseif count <= 1000 then
      local r = t
      t = nil
      local sent, serr = pcall(answers._send_list, answers, r, count, seq, true, count)
      if not sent then chunk_unsent(seq, r, serr, 4, "values") end
      r = nil
    else
      local r = t
      t = nil
      local sent, serr = pcall(answers.send, answers, seq, true, -count, r)
      if not sent then chunk_unsent(seq, r, serr, 4, "table") end
      r = nil
    end
  end
  local function loop()
    if c.init then
      local ok, err = xpcall(function() apply(pt.decode(c.init)) end, handler)
      if not ok then
        answers:send("initfail", wid, err)
        if room then room:set() end
        return "initfail"
      end
      claims[-wid] = true        -- past its initializer (an end before it breaks the pool)
    end
    local done = 0
    while not max_tasks or done < max_tasks do
      -- a cancellation point; a map chunk's values go into R
      local op, seq, payload, op2, seq2 = take(tasks:_recv())
      local undecodable = op == nil and seq == "undecodable"
      if undecodable then
        -- the task fails (as its decode in the task would)
        op, seq = op2, seq2
        if type(seq) ~= "number" then error("pool worker: a task message did not decode: " .. tostring(payload), 0) end
      end
      if op == nil then break end                    -- closed: the pool stops
      if room then room:set() end                    -- a submit waiting for room may go on
      if pt.cas(claims, seq, nil, wid) then
        if not undecodable then run(op, seq, payload)
        elseif op == "map" then reply(seq, false, tostring(payload), 0, {})
        else reply(seq, false, tostring(payload)) end
        claims[seq] = nil
        ring()
        done = done + 1
      else
        R = nil
        claims[seq] = nil        -- cancelled or taken back: the caller released it
        -- its room in the task channel is free: a caller whose tasks wait
        -- for it must wake (it may be waiting for an answer that never
        -- comes); any message wakes it, so one is sent only to an empty
        -- channel (at most one per worker waits unread)
        if #answers == 0 then
          answers:offer(0, "skipped")
          ring()
        end
      end
    end
  end
  local ok, why = pcall(loop)
  if not c.life and why ~= "initfail" then
    -- a thread reports its own end (a process's is seen by the watcher)
    answers:send("ended", wid, not ok and tostring(why) or nil)
    pcall(ring)
    if room then room:set() end
  end
  if not ok then error(why, 0) end
  return true
end

-- The watcher of a process pool: a thread that sleeps in pt.select over the
-- life pipes of the workers (and its control pipe) and reports each end.
-- It holds counted references to the pool's shared objects (`keep`): told
-- to stop, it stays until the last process it watches has ended, so that
-- a pool dropped without close never frees a channel under a process
-- still using it (a forked worker's inherited handles hold no counts).
local function watcher_main(ctl, answers, room, keep)
  local pt = require "procthread"
  local list, who, stopping = { ctl }, {}, false
  local claims, flags, bell, took = keep[3], keep[4], keep[5], keep[6]
  local function ring()       -- an end is news for pool:fd() too (as a worker rings)
    if flags[1] ~= 0 and pt.add(claims, "rung", 1) == 1 then bell:send(true) end
  end
  while #list > 0 do
    local p = pt.select(list)
    if p == ctl then
      local cmd, wid, life = ctl:recv(0)
      if cmd == "watch" then
        list[#list + 1] = life
        who[life] = wid
        took:offer(0, true)       -- the owner waits for it (start_worker); never blocks
      elseif cmd ~= nil or wid == "closed" then  -- "stop", or the pool is gone
        stopping = true
        table.remove(list, 1)
        ctl:close()
      end
    else
      for i = 1, #list do
        if list[i] == p then table.remove(list, i); break end
      end
      p:close()
      if stopping then answers:offer(0, "ended", who[p]) else answers:send("ended", who[p]) end
      if not stopping then ring() end
      who[p] = nil
      if room then room:set() end
    end
  end
  keep = nil
  return true
end

-- ---- the pool ------------------------------------------------------------

local function is_pool(p) return getmt(p) == Pool end

-- `level`: where the caller's line is, counted from the function that
-- called these (1, the default: its caller).
local function check_owner(fname, self, level)
  if self.pt._self_id() ~= self.owner then
    error(("%s: this pool belongs to another process (pid %d)"):format(fname, self.owner), 2 + (level or 1))
  end
end

local function check_pool(fname, self, level)
  level = level or 1
  if not is_pool(self) then
    error(("%s: bad self (a pool expected, got %s; call it as pool:%s(...))")
      :format(fname, type(self), fname:match("[%.:](%w+)$") or "method"), 2 + level)
  end
  check_owner(fname, self, level + 1)
end

local WATCH = 1000        -- life pipes per watcher (pt.select takes 1024 pipes)

-- The watcher of slot i (process pools), started on first use.
local function watcher_for(self, i)
  local k = math.floor((i - 1) / WATCH) + 1
  local wt = self.watchers[k]
  if wt then return wt end
  local pt = self.pt
  local ctl, err = pt.pipe()
  if not ctl then return nil, err end
  -- the take is told on a channel, which pt.select waits for beside the
  -- watcher itself: a watcher that ended (it could not start) is seen at once
  local made, took = pcall(pt.channel, 1)     -- a full arena raises: pt.pool's error
  if not made then ctl:close(); return nil, unplace(took), true end
  local keep = { self.tasks, self.answers, self.claims, self.flags, self.bell, took }
  local ok, w, werr = pcall(pt.spawn_thread, watcher_main, ctl, self.answers, self.room, keep)
  if not ok or not w then ctl:close(); return nil, tostring(ok and werr or w) end
  pt._daemon(w, true)             -- stopped at exit, and no worker of the at-exit line's
  wt = { w = w, ctl = ctl, took = took }
  self.watchers[k] = wt
  return wt
end

-- The wait for the watcher's take, or its end ("ended"); a Ctrl-C ends it,
-- and the hook raises at the next instruction: here, inside the caller's
-- pcall.
local function wait_took(pt, wt, t)
  local r = pt.select({ wt.took, wt.w }, t)
  if r == wt.took then return wt.took:recv(0) == true end
  return false, r == wt.w and "ended" or nil
end

local place, settle_filling

-- Start the worker of slot i.
local function start_worker(self, i)
  local pt = self.pt
  if self.filling then                              -- one start at a time
    settle_filling(self)
    if self.slots[i] then return true end
  end
  self.next_wid = self.next_wid + 1
  local wid = self.next_wid
  local c = { tasks = self.tasks, answers = self.answers, claims = self.claims, flags = self.flags,
              bell = self.bell, room = self.room, wid = wid, max_tasks = self.max_tasks,
              max_results = MAX_RESULTS }
  if self.init then
    -- encoded for each worker: each decodes (and so owns) its own copy
    local ok, enc = pcall(pt.encode, self.init, unpack(self.initargs, 1, self.initargs.n))
    if not ok then return nil, "initializer: " .. tostring(enc):gsub("^encode: ", "") end
    c.init = enc
  end
  local wt
  if self.kind == "process" then
    local err
    wt, err = watcher_for(self, i)
    if not wt then return nil, err end
    c.life, err = pt.pipe()
    if not c.life then return nil, err end
    c.close = {}
    for _, x in pairs(self.watchers) do c.close[#c.close + 1] = x.ctl end
  end
  -- A Ctrl-C (a hook's raise as one of the calls below returns) may leave
  -- this function before the worker is in its slot: `filling` says how far
  -- it came, and the pool's next call finishes the start (settle_filling).
  local f = { i = i, c = c, wid = wid, wt = wt }
  self.filling = f
  -- _spawn_into stores the handle in f.w before it returns: an interrupt
  -- raised as it returns leaves the worker to settle_filling, and goes on
  local ok, w, werr = pcall(pt._spawn_into, f, "w", self.kind, worker_main, c)
  if not ok and f.w then error(w, 0) end
  if not ok or not w then
    self.filling = nil
    if c.life then c.life:close() end
    if c.init then pt.discard(c.init) end
    return nil, tostring(ok and werr or w)
  end
  f.w = w
  return place(self, f)
end

-- The worker of a start (f: start_worker's) goes in its slot, and a process
-- worker to its watcher.
function place(self, f)
  local pt, i, w, wid, c, wt = self.pt, f.i, f.w, f.wid, f.c, f.wt
  pt._daemon(w)                  -- at exit: stopped, never waited for
  if c.life then
    c.life:close_write()         -- the child's end alone: it closes when the child ends
  else
    -- a thread that ends before worker_main runs (no memory for its
    -- state) cannot report its end: it sends this instead
    self.answers:_end_note(w, "startfail", wid)
  end
  -- in its slot before the handoff: a Ctrl-C there leaves it the pool's
  self.slots[i] = { w = w, wid = wid }
  self.byid[wid] = i
  self.started = self.started + 1
  self.filling = nil
  if c.life then
    -- the watcher holds the read end once it has taken the message: wait
    -- for that.  A message left in the pipe would hold that end for good
    -- (the pipe's unread messages are kept after a fork).  A Ctrl-C in the
    -- wait is raised once the watcher has it.  An interrupt raised as clear returns: nothing sent, the worker is
    -- undone at once; raised as send returns: it may be sent, waited for.
    local sending = false
    local ok, intr = pcall(function()
      while wt.took:recv(0) ~= nil do end   -- a take told after a give-up
      sending = true
      wt.ctl:send("watch", wid, c.life)
    end)
    local took = false
    if ok then intr = nil end
    local deadline = pt.now() + TAKE_WAIT
    local ended = false
    while sending and not took and not ended and pt.now() < deadline do
      local ok2, r, why = pcall(wait_took, pt, wt, math.max(0, deadline - pt.now()))
      if ok2 then took, ended = r, why == "ended" else intr = intr or r end
    end
    if not took then
      self.slots[i], self.byid[wid] = nil, nil
      c.life:close()
      pcall(w.kill, w, "KILL")
      w:join(STOP_WAIT)
      if intr then error(intr, 0) end
      if ended then
        local _, why = wt.w:join(0)
        return nil, "the pool's watcher ended: " .. tostring(why)
      end
      return nil, "the pool's watcher did not take worker " .. wid .. " within " .. TAKE_WAIT .. " s"
    end
    if intr then error(intr, 0) end
  end
  return true
end

-- A start of a worker that a Ctrl-C cut short before the worker was in its
-- slot (start_worker): the worker spawned is placed now, as if nothing had
-- come between (it may have taken tasks already: it must be the pool's,
-- watched, its end read); a pool stopped since stops it.  Without a worker
-- (the interrupt came as the spawn returned) the slot is started again.
-- Before anything that looks at the slots (refill, stop_all) or starts
-- another worker.
function settle_filling(self, stopping)
  local f = self.filling
  local w = f.w
  if w and not stopping and not self.slots[f.i] then
    local ok, err = place(self, f)
    if not ok then self.spawn_error = err end
    return
  end
  self.filling = nil
  if w then
    if w.kind == "process" then pcall(w.kill, w, "KILL") else pcall(w.cancel, w) end
    w:join(STOP_WAIT)
  end
  if f.c.life then pcall(f.c.life.close, f.c.life) end
  if not stopping and not self.slots[f.i] and self.state ~= "closed" then
    local ok, err = start_worker(self, f.i)
    if not ok then self.spawn_error = err end
  end
end

-- A task's answer.  A task that never ran releases what its payload holds
-- (shared objects, pipes): nobody else will decode or discard it.
local function settle_with(self, task, never_ran, answer)
  if task.answer then return end
  -- released before the answer marks it settled: a cancel landing in
  -- between leaves it to the finalizer (a discard twice is a no-op)
  if never_ran and task.payload then self.pt.discard(task.payload) end
  task.payload = nil
  task.answer = answer
  if task.seq then
    if self.inflight[task.seq] == task then self.ninflight = self.ninflight - 1 end
    self.inflight[task.seq] = nil
  end
  if task.job and task.job.ready then task.job.ready(task) end
end

local function settle(self, task, never_ran, ...)
  if not task.answer then settle_with(self, task, never_ran, pack(...)) end
end

-- Fail a task that has not started (queued here or in the channel).
local function drop(self, task, ...)
  settle(self, task, true, false, ...)
end

local refill

-- Push task on the task channel (a new claim number each time).
-- The task is in flight before the offer: a cancel that lands right after
-- it finds the task there (the finalizer's claim then keeps it from running).
-- The number is used up before the offer: an interrupt raised as the
-- offer returns (the task sent or not) must not leave it to the next task,
-- which would be given this one's answer.  An offer that raised may have
-- sent the task: its claim is taken ("cancelled", so a worker that finds
-- it skips it) before the task fails, and the error goes on.
local function push(self, task)
  local seq = self.seq + 1
  self.seq = seq
  task.seq = seq
  self.inflight[seq] = task
  self.ninflight = self.ninflight + 1
  local ok, sent
  if task.op == "map" then       -- the payload's values follow op and seq in one message
    ok, sent = pcall(self.tasks._offer_cat, self.tasks, 0, task.payload, "map", seq)
  else
    ok, sent = pcall(self.tasks.offer, self.tasks, 0, task.op, seq, task.payload)
  end
  if ok and sent then return true end
  if ok then                     -- no room: not sent, the number is free again
    self.inflight[seq] = nil
    self.ninflight = self.ninflight - 1
    task.seq = nil
    self.seq = seq - 1
    return false
  end
  if self.pt.cas(self.claims, seq, nil, "cancelled") then drop(self, task, "pool: " .. tostring(sent)) end
  error(sent, 0)
end

local function fail_all(self, never_ran_only, ...)
  while self.qhead <= self.qtail do
    local task = self.queue[self.qhead]
    self.queue[self.qhead] = nil
    self.qhead = self.qhead + 1
    drop(self, task, ...)
  end
  for seq, task in pairs(self.inflight) do
    local v = self.claims[seq]
    if v == nil or type(v) == "string" then drop(self, task, ...)
    elseif not never_ran_only then settle(self, task, false, false, ...) end
  end
end

local terminate_workers, close_up, on_message

-- The pool cannot start workers that serve (its initializer fails): every
-- future without an answer fails, the workers stop.
local function break_pool(self, why)
  self.broken = why
  terminate_workers(self)
  fail_all(self, false, "pool: " .. why)
  close_up(self)
end

-- A worker ended (its end reported on the answer channel).
local function on_end(self, wid, why)
  local i = self.byid[wid]
  local r = self.retired[wid]
  if r then                                   -- a retired worker: reap it
    self.retired[wid] = nil
    r.w:join(FOREVER)
    return
  end
  if not i then return end
  local s = self.slots[i]
  self.byid[wid] = nil
  self.slots[i] = nil
  local res = pack(s.w:join(FOREVER))
  if self.init then
    local inited = self.claims[-wid]
    self.claims[-wid] = nil
    if not inited and self.state ~= "closed" then
      -- it ended in its initializer (os.exit, a signal): its replacements
      -- would too, one fork after the other
      self.deaths = self.deaths + 1
      return break_pool(self, "initializer failed: worker died: " ..
        tostring(why or res[2] or "worker ended"))
    end
  end
  if res[1] ~= true or why then
    -- a death: the task it had claimed fails; tasks it had taken from the
    -- channel without claiming them are taken back and pushed again
    self.deaths = self.deaths + 1
    why = "worker died: " .. tostring(why or res[2] or "worker ended")
    local claims = self.claims
    local taken = self.seq - #self.tasks
    local back = {}
    for seq, task in pairs(self.inflight) do
      local v = claims[seq]
      if v == wid then
        settle(self, task, false, false, why)
      elseif v == nil and seq <= taken and self.pt.cas(claims, seq, nil, "lost") then
        back[#back + 1] = task
      end
    end
    if back[1] then
      -- a live worker clears its claim after its answer is sent: a task
      -- found unclaimed may have finished, its answer behind this end in
      -- the channel; those answers are there now (the cas came after the
      -- clear): read them, so that a finished task is never run again
      for _ = 1, #self.answers do
        if self.closed_up then return end
        on_message(self, self.answers:_recv_into(self.inflight, 3, 0))
      end
      if self.closed_up then return end
    end
    local keep = {}
    for _, task in ipairs(back) do
      if task.answer then claims[task.seq] = nil else keep[#keep + 1] = task end
    end
    back = keep
    table.sort(back, function(a, b) return a.seq < b.seq end)
    for k = #back, 1, -1 do
      local task = back[k]
      local seq = task.seq
      self.qhead = self.qhead - 1           -- in the list before out of flight
      self.queue[self.qhead] = task
      task.seq = nil
      self.inflight[seq] = nil
      self.ninflight = self.ninflight - 1
    end
  end
  if self.state ~= "closed" then
    local ok, err = start_worker(self, i)
    if not ok then self.spawn_error = err end
  end
end

-- An answer that does not decode here (a private array or a pipe of the
-- worker's process in the results): its task fails with the reason.
local function on_undecodable(self, err, seq)
  local task = type(seq) == "number" and self.inflight[seq]
  if not task then return end
  self.completed = self.completed + 1
  settle(self, task, false, false, "results: " .. tostring(err))
end

-- One message from the answer channel (nil, "undecodable", err, seq: one
-- that did not decode).
function on_message(self, seq, ok, a, ...)
  if seq == nil then
    on_undecodable(self, a, ...)
  elseif type(seq) == "number" then
    local task = self.inflight[seq]
    if not task then return end                 -- settled already: a late answer, dropped
    self.completed = self.completed + 1
    if task.into then
      -- a chunk routed into the map's list (ch:_recv_into: the values
      -- after the first three went to into[at]...): on success the
      -- results in place (or, -count, the table of them), else the
      -- failing item and the results before it
      local into, at, stored = task.into, task.at, ...
      local v1, v2 = into[at], into[at + 1]
      if not ok or a < 0 then for i = at, at + stored - 1 do into[i] = nil end end
      if not ok then settle(self, task, false, false, a, v1, v2)
      elseif a < 0 then settle(self, task, false, true, v1, -a)
      else settle(self, task, false, true, false, a) end
    elseif task.op == "map" and ok then
      -- a chunk's results: count, values... (or -count, table)
      if a < 0 then settle(self, task, false, true, (...), -a)
      else settle(self, task, false, true, { ... }, a) end
    else
      -- packed here, once (a task may return many values: each copy of
      -- them takes that much of the stack)
      settle_with(self, task, false, tpack(ok, a, ...))
    end
  elseif seq == "skipped" then                  -- room in the task channel: refilled next
  elseif seq == "ended" then
    on_end(self, ok, a)
  elseif seq == "initfail" or seq == "startfail" then
    -- a thread worker that cannot serve (its initializer failed, it could
    -- not load the module, or it ended before worker_main ran): its
    -- replacements would fail the same way
    local i, why = self.byid[ok], a
    if i then
      self.byid[ok] = nil
      local _, err = self.slots[i].w:join(FOREVER)
      if why == nil then why = err end       -- its end note (place): join says why
      self.slots[i] = nil
    end
    break_pool(self, (seq == "initfail" and "initializer failed: " or "worker failed to start: ") .. tostring(why))
  end
end

-- The bell (pool:fd()): emptied before the answers are read, so that an
-- answer left unread always has its byte in the pipe.
local function clear_bell(self)
  local b = self.bell
  while b:recv(0) ~= nil do end
  self.claims.rung = 0
end

-- The first answer of a wait (passed on as it came: a chunk's results are
-- a thousand values), or false on a timeout.  `sigints`: the SIGINT count
-- before the wait; "interrupted" with the count unchanged was a signal
-- handler of the program's own, which has run: true, and the caller, which
-- loops until what it waits for is there, waits again.
local function on_wait(self, sigints, seq, why, ...)
  if seq == nil and why ~= "undecodable" then
    if why == "interrupted" and self.pt._sigints() == sigints then return true end
    if why ~= "timeout" and why ~= "closed" then error(why, 0) end
    return false
  end
  on_message(self, seq, why, ...)
  return true
end

-- Read the answers waiting; with `wait` (seconds), wait up to that long for
-- the first.  Then refill the task channel.  Returns false on a timeout.
local function drain(self, wait)
  if self.closed_up then return true end
  if self.bell_on then clear_bell(self) end
  local a = self.answers
  local got, n = true, #a
  if n == 0 and wait then
    refill(self)                 -- what waits here goes out before the wait
    if self.closed_up then return true end
    local sigints = self.pt._sigints()
    got = on_wait(self, sigints, a:_recv_into(self.inflight, 3, wait))
    n = got and #a or 0
  end
  while n > 0 and not self.closed_up do
    on_message(self, a:_recv_into(self.inflight, 3, 0))
    n = #a
  end
  refill(self)
  return got
end

-- Move tasks from the caller's list to the channel while it has room (and
-- the answers not yet read, with the tasks in flight, stay within what the
-- answer channel holds: a worker never waits to send one).
function refill(self)
  if self.closed_up then return end
  if self.filling then settle_filling(self) end
  local live = next(self.slots) ~= nil
  if not live and self.state ~= "closed" then
    for i = 1, self.n do
      if not self.slots[i] then
        local ok, err = start_worker(self, i)
        if not ok then self.spawn_error = err end
      end
    end
    live = next(self.slots) ~= nil
  end
  if not live and (self.qhead <= self.qtail or next(self.inflight)) then
    -- no worker can be started: fail what waits rather than wait forever
    fail_all(self, true, "pool: cannot start a worker: " .. tostring(self.spawn_error))
    return
  end
  while self.qhead <= self.qtail and self.ninflight < self.limit do
    local task = self.queue[self.qhead]
    if not task.answer and not push(self, task) then return end
    self.queue[self.qhead] = nil
    self.qhead = self.qhead + 1
  end
end

local OPTS = { max_tasks = true, initializer = true, initargs = true, queue = true }

local function check_opts(fname, opts)
  if opts ~= nil and type(opts) ~= "table" then argerr(fname, 3, "options table expected, got " .. type(opts), 2) end
  -- read once, into a plain table (a proxy's __index or __pairs may raise)
  local read, copy, initn = pcall(function()
    local t = {}
    for k, v in pairs(opts or t) do t[k] = v end
    for k in pairs(OPTS) do t[k] = (opts or t)[k] end
    local ia = t.initargs
    if type(ia) == "table" then
      -- the list of initargs, read here too
      local n = ia.n
      local list = { n = n }
      if n == nil then n = table.maxn and table.maxn(ia) or #ia end
      if type(n) == "number" and n >= 0 and n <= 1000 then   -- else refused below
        for i = 1, n do list[i] = ia[i] end
      end
      t.initargs = list
      return t, n
    end
    return t
  end)
  if not read then argerr(fname, 3, "reading the options raised: " .. tostring(copy), 2) end
  opts = copy
  for k in pairs(opts) do
    if not OPTS[k] then argerr(fname, 3, ("unknown option %q"):format(tostring(k)), 2) end
  end
  local function int(name, v)
    if v ~= nil and (type(v) ~= "number" or not (v >= 1) or v ~= math.floor(v) or v > 1048576) then
      argerr(fname, 3, ("opts.%s must be an integer from 1 to 1048576, got %s")
        :format(name, got(v)), 3)
    end
  end
  int("max_tasks", opts.max_tasks)
  int("queue", opts.queue)
  if opts.initializer ~= nil and type(opts.initializer) ~= "function" then
    argerr(fname, 3, "opts.initializer must be a function, got " .. type(opts.initializer), 2)
  end
  if opts.initargs ~= nil and type(opts.initargs) ~= "table" then
    argerr(fname, 3, "opts.initargs must be a table, got " .. type(opts.initargs), 2)
  end
  local n = opts.initargs and opts.initargs.n
  if n ~= nil and (type(n) ~= "number" or not (n >= 0) or n ~= math.floor(n) or n > 1000) then
    argerr(fname, 3, "opts.initargs.n must be an integer from 0 to 1000, got " ..
      got(n), 2)
  end
  -- without n, its length (a proxy's __len may give anything)
  if opts.initargs and n == nil and (type(initn) ~= "number" or not (initn >= 0) or initn > 1000) then
    argerr(fname, 3, "opts.initargs must be a list of at most 1000 values, got a length of " ..
      got(initn), 2)
  end
  if initn then initn = math.floor(initn) end
  return opts, initn
end

-- Stop and join every worker and watcher; the handles of a pool stopped for
-- good are dropped.  `now`: kill (process) or cancel (thread) first.
local function join_or_kill(w, timeout)
  local r = pack(w:join(timeout))
  if r[1] == nil and r[2] == "timeout" then
    if w.kind == "process" then pcall(w.kill, w, "KILL") else pcall(w.cancel, w) end
    r = pack(w:join(STOP_WAIT))
  end
  return unpack(r, 1, r.n)
end

local function stop_all(self, now, timeout)
  if self.filling then settle_filling(self, true) end
  local ws, idle = {}, {}
  local claims = self.claims
  if now then
    -- no task not started yet will run; the workers that run none (idle:
    -- past their initializer, without a claim) are not stopped but told to
    -- leave, so that they release what they hold (a process killed keeps
    -- the counts on the shared objects its tasks were given, long after)
    for seq in pairs(self.inflight) do self.pt.cas(claims, seq, nil, "dropped") end
    for i = 1, self.n do
      local s = self.slots[i]
      if s and (not self.init or claims[-s.wid]) then idle[s.wid] = true end
    end
    for seq in pairs(self.inflight) do
      local v = claims[seq]
      if type(v) == "number" then idle[v] = nil end
    end
  end
  local kill, killed = {}, {}
  for i = 1, self.n do
    local s = self.slots[i]
    if s then
      ws[#ws + 1] = s.w
      if now and not idle[s.wid] then kill[#kill + 1] = s.w end
    end
    self.slots[i] = nil
  end
  for _, r in pairs(self.retired) do ws[#ws + 1] = r.w; kill[#kill + 1] = r.w end
  self.retired, self.byid = {}, {}
  pcall(self.tasks.close, self.tasks)           -- workers leave when it is drained
  for _, w in ipairs(kill) do
    if w.kind == "process" then pcall(w.kill, w, "KILL") else pcall(w.cancel, w) end
    killed[w] = true
  end
  local deadline = self.pt.now() + timeout
  for _, w in ipairs(ws) do
    local left = math.max(0, deadline - self.pt.now())
    if killed[w] then w:join(left) else join_or_kill(w, left) end
  end
  pcall(self.answers.close, self.answers)       -- nobody reads the ends reported now
  for _, wt in pairs(self.watchers) do
    pcall(wt.ctl.send, wt.ctl, "stop")
    join_or_kill(wt.w, STOP_WAIT)
    pcall(wt.ctl.close, wt.ctl)
  end
  self.watchers = {}
end

function terminate_workers(self)
  self.state = "closed"
  stop_all(self, true, STOP_WAIT)
end

-- After the last worker: nothing more will be answered.
function close_up(self)
  if self.closed_up then return end      -- a drain of close's broke the pool already
  fail_all(self, false, "pool terminated")
  pcall(self.answers.close, self.answers)
  pcall(self.bell.close, self.bell)
  self.closed_up = true
  -- the shared objects go now, not when the pool is collected
  self.pt.release(self.claims)
  self.pt.release(self.flags)
  for k in pairs(self.fields) do self.fields[k] = nil end
  self.tasks, self.answers, self.claims, self.flags, self.bell, self.room = nil, nil, nil, nil, nil, nil
  self.initargs = nil             -- what they hold is released with the pool, not when it is collected
end

function P.new(pt, kind, n, opts)
  local fname = "procthread.pool"
  P.pt = pt
  if kind ~= "thread" and kind ~= "process" then
    argerr(fname, 1, "kind must be \"thread\" or \"process\", got " ..
      (type(kind) == "string" and ("%q"):format(kind) or type(kind)))
  end
  if type(n) ~= "number" or n ~= n or n < 1 or n ~= math.floor(n) or n > 1024 then
    argerr(fname, 2, "n must be an integer from 1 to 1024, got " .. got(n))
  end
  local initn
  opts, initn = check_opts(fname, opts)
  local cap = opts.queue or math.max(16, 2 * n)
  local limit = cap + n
  local bell, err = pt.pipe()
  if not bell then error(fname .. ": " .. tostring(err), 2) end
  -- the shared objects (a full arena raises): what was made goes again,
  -- and the error is pt.pool's
  local made = {}
  local ok, merr = pcall(function()
    made.tasks = pt.channel(cap)
    made.answers = pt.channel(math.min(1048576, limit + 2 * n + 8))
    made.claims = pt.shared_table()
    made.flags = pt.array(1, "shared")
    made.room = opts.queue and pt.event() or nil
  end)
  if not ok then
    bell:close()
    if made.tasks then made.tasks:close() end
    if made.answers then made.answers:close() end
    if made.claims then pt.release(made.claims) end
    if made.flags then pt.release(made.flags) end
    error(fname .. ": " .. unplace(merr), 2)
  end
  local ia = opts.initargs
  local initargs = ia and pack(unpack(ia, 1, initn))
  local self = setmetatable({
    pt = pt, kind = kind, n = n, max_tasks = opts.max_tasks, owner = pt._self_id(),
    init = opts.initializer, initargs = initargs or (opts.initializer and { n = 0 }),
    tasks = made.tasks, answers = made.answers,
    claims = made.claims, flags = made.flags, bell = bell,
    room = made.room, bounded = opts.queue ~= nil,
    limit = limit, slots = {}, byid = {}, retired = {}, watchers = {}, inflight = {}, ninflight = 0,
    queue = {}, qhead = 1, qtail = 0, next_id = 0, next_wid = 0, seq = 0, state = "open",
    started = 0, completed = 0, deaths = 0,
  }, Pool)
  -- a pool dropped without close(): what waits is released, the channel
  -- closed, so that the workers (and the watcher) leave by themselves
  local fields = { self.tasks, self.claims, self.queue, self.inflight, self.watchers }
  self.fields = fields
  -- Finalizers run newest first.  The pool's is newer than the handles it
  -- uses (the channels, a watcher's control pipe: made first, below) and
  -- older than the workers: the at-exit sentinel, made anew at each spawn
  -- (lifecycle.c), is then finalized before it at lua_close, and the
  -- workers are stopped (and counted) at exit before the task channel is
  -- closed under them (the other way round, they left as the at-exit pass
  -- looked, and its line counted some of them)
  local function started(i, done, ok, e, whole)
    if not done then                      -- a Ctrl-C: no pool, no worker
      self:terminate()
      error(ok, 0)
    end
    if not ok then
      self:terminate()
      if whole then error(fname .. ": " .. e, 3) end   -- the watcher's channel: no room
      error(("%s: cannot start worker %d of %d: %s"):format(fname, i, n, tostring(e)), 3)
    end
  end
  if kind == "process" then
    for i = 1, n, WATCH do started(i, pcall(watcher_for, self, i)) end
  end
  local owner = self.owner
  local function finalize()
    local tasks, claims, queue, inflight, watchers = fields[1], fields[2], fields[3], fields[4], fields[5]
    if not tasks then return end          -- closed already
    -- a forked child's copy: the channels and claims are its parent's
    if pt._self_id() ~= owner then return end
    -- every task not answered whose payload no worker has: one in flight
    -- when the claim is ours (won now, or a string: cancelled, taken back)
    local seen = {}
    local function release(task)
      if type(task) ~= "table" or not task.payload or task.answer or seen[task] then return end
      seen[task] = true
      local seq = task.seq
      if seq then
        local ok, won = pcall(pt.cas, claims, seq, nil, "dropped")
        if not ok then return end
        if not won then
          local got, v = pcall(function() return claims[seq] end)
          if not got or type(v) ~= "string" then return end   -- a worker's
        end
      end
      pcall(pt.discard, task.payload)
    end
    for _, task in pairs(queue) do release(task) end
    release(fields[6])                    -- a submit, or the chunks of a map, stopped
    if fields[7] then for _, task in ipairs(fields[7]) do release(task) end end
    for _, task in pairs(inflight) do release(task) end
    pcall(tasks.close, tasks)
    for _, wt in pairs(watchers) do pcall(wt.ctl.send, wt.ctl, "stop") end
  end
  if _VERSION == "Lua 5.1" and newproxy then
    local proxy = newproxy(true)
    getmetatable(proxy).__gc = finalize
    self.gc_proxy = proxy
  else
    self.gc_proxy = setmetatable({}, { __gc = finalize })
  end
  for i = 1, n do started(i, pcall(start_worker, self, i)) end
  return self
end

-- A future.  Every field it will have is named here, nil until it is set,
-- so that the table is made at its size once (fields added later made it
-- grow two or three times a task).
local function new_task(self, op, payload, first, job, k, into)
  self.next_id = self.next_id + 1
  return setmetatable({ pool = self, id = self.next_id, op = op, payload = payload,
                        seq = nil, answer = nil, first = first, job = job, k = k,
                        into = into, at = into and first }, Future)
end

-- A Ctrl-C ends the wait, and the interpreter's hook raises at the next
-- instruction: here, inside the caller's pcall (a C function's return is
-- no hook point on LuaJIT).
local function wait_room(room)
  room:wait()
  return true
end

-- Queue a task: pushed at once when the channel has room; else kept here,
-- or, for a pool with `queue`, waited for.
local function enqueue(self, task)
  drain(self)
  if self.closed_up then return drop(self, task, "pool: " .. tostring(self.broken or "terminated")) end
  if self.qhead > self.qtail and self.ninflight < self.limit and push(self, task) then return end
  if not self.bounded then
    self.qtail = self.qtail + 1
    self.queue[self.qtail] = task
    return
  end
  while not task.answer do
    self.room:clear()
    drain(self)
    if self.closed_up or self.state ~= "open" then
      drop(self, task, "pool terminated")
    elseif self.ninflight < self.limit and push(self, task) then
      return
    else
      -- Ctrl-C there: the task is given up (what it carries released);
      -- a thread cancelled there leaves it to the finalizer (fields[6])
      local ok, err = pcall(wait_room, self.room)
      if not ok then drop(self, task, "interrupted"); error(err, 0) end
    end
  end
end

local function check_open(fname, self, level)
  level = 2 + (level or 1)
  if self.broken then error(fname .. ": the pool is broken: " .. self.broken, level) end
  if self.state ~= "open" then error(fname .. ": the pool is closed", level) end
end

function Pool:submit(fn, ...)
  check_pool("pool:submit", self)
  check_open("pool:submit", self)
  if type(fn) ~= "function" then argerr("pool:submit", 1, "function expected, got " .. type(fn)) end
  -- the task is the finalizer's to find (fields[6]: in no list yet) before
  -- its payload exists, which _encode_into stores in it before returning
  local task = new_task(self, "call", nil)
  local fields = self.fields
  fields[6] = task
  local ok, err = pcall(self.pt._encode_into, task, "payload", fn, ...)
  if not ok then
    -- an interrupt raised on _encode_into's return finds the payload stored
    if task.payload then self.pt.discard(task.payload); task.payload = nil end
    fields[6] = nil
    error("pool:submit: " .. tostring(err), 2)
  end
  enqueue(self, task)
  fields[6] = nil
  return task
end

-- ---- map, imap, imap_unordered: the list goes out in chunks (a few per
-- worker), each one task.

local function check_map(fname, self, fn, list, chunk)
  check_pool(fname, self, 2)
  check_open(fname, self, 2)
  if type(fn) ~= "function" then argerr(fname, 1, "function expected, got " .. type(fn), 2) end
  if type(list) ~= "table" then argerr(fname, 2, "table expected, got " .. type(list), 2) end
  if chunk ~= nil and (type(chunk) ~= "number" or chunk < 1 or chunk ~= math.floor(chunk)) then
    argerr(fname, 3, "chunk size must be an integer >= 1, got " .. tostring(chunk), 2)
  end
  -- the list's length, read once (a proxy's __len may give anything): no
  -- count (negative, NaN) maps nothing; one past 2^53 (math.huge) is no
  -- list any loop could finish
  local read, count = pcall(function() return #list end)
  if not read then argerr(fname, 2, "the list's length raised: " .. tostring(count), 2) end
  if type(count) ~= "number" then
    argerr(fname, 2, "the list's length must be a number, got " .. type(count), 2)
  end
  if count ~= count or count < 1 then return 0 end
  if count > 2 ^ 53 then argerr(fname, 2, "the list's length must be at most 2^53, got " .. tostring(count), 2) end
  return math.floor(count)
end

local abandon

-- The chunks of a job, encoded all first (a value the codec refuses raises
-- before any chunk is queued), then queued.  job.ready(task) is called as
-- each chunk is settled.
-- A chunk's payload: items first..last of list (read here: a proxy's
-- __index may raise).
local function encode_chunk(self, t, fn, list, first, last)
  if last - first < 1000 then return self.tasks:_encode_chunk(t, "payload", list, first, last, fn) end
  local encode_into = self.pt._encode_into
  local items = {}                -- too many values for the stack: a table (count < 0)
  for i = first, last do items[i - first + 1] = list[i] end
  return encode_into(t, "payload", fn, first - last - 1, items)
end

-- The codec names a value by its place in the chunk's payload (values[k]:
-- count, the items, fn; or fn, -count, the table of the items): named
-- here by its place in the caller's list (list[i]) or as fn.
local function chunk_path(err, first, last)
  local k, rest = err:match("^values%[(%d+)%](.*)$")
  k = tonumber(k)
  if not k then return err end
  if last - first < 1000 then
    if k == last - first + 3 then return "fn" .. rest end
    if k >= 2 and k <= last - first + 2 then return ("list[%d]%s"):format(first + k - 2, rest) end
  else
    if k == 1 then return "fn" .. rest end
    local j, more = rest:match("^%[(%d+)%](.*)$")
    if k == 3 and j then return ("list[%d]%s"):format(first + tonumber(j) - 1, more) end
  end
  return err
end

local function start_job(fname, self, fn, list, count, chunk, ready, into)
  chunk = chunk or math.max(1, math.min(1000, math.ceil(count / (self.n * 4))))
  local job = { chunks = {}, ready = ready, count = count }
  -- the chunks not queued yet are given up when an encode, or a wait for
  -- room, raises (a thread cancelled there leaves them to the finalizer:
  -- each chunk is in fields[7] before its payload exists)
  local fields = self.fields
  fields[7] = job.chunks
  for first = 1, count, chunk do
    local last = math.min(count, first + chunk - 1)
    local t = new_task(self, "map", nil, first, job, #job.chunks + 1, into)
    job.chunks[t.k] = t
    local ok, err = pcall(encode_chunk, self, t, fn, list, first, last)
    if not ok then
      for _, c in ipairs(job.chunks) do
        if c.payload then self.pt.discard(c.payload); c.payload = nil end
      end
      fields[7] = nil
      -- the codec's error comes with the position of the pool's call: cut
      err = chunk_path(unplace(err), first, last)
      error(("%s: items %d-%d: %s"):format(fname, first, last, err), 3)
    end
  end
  local ok, err = pcall(function() for _, t in ipairs(job.chunks) do enqueue(self, t) end end)
  fields[7] = nil
  if not ok then abandon(self, job); error(err, 0) end
  return job
end

-- Give up the chunks of a job that have not started.
function abandon(self, job)
  for _, t in ipairs(job.chunks) do
    if not t.answer then
      if not t.seq then drop(self, t, "cancelled")
      elseif self.pt.cas(self.claims, t.seq, nil, "cancelled") then drop(self, t, "cancelled") end
    end
  end
end

local function chunk_error(fname, t)
  local a = t.answer
  local at = (a[3] and a[3] > 0) and (t.first + a[3] - 1) or t.first
  return ("%s: item %d failed: %s"):format(fname, at, tostring(a[2]))
end

-- Wait until task has an answer.
local function await(self, task)
  while not task.answer do drain(self, FOREVER) end
end

function Pool:map(fn, list, chunk)
  local count = check_map("pool:map", self, fn, list, chunk)
  -- every chunk's answer is decoded straight into out, at its place: out
  -- is made with room for all the items (its array part), so the chunks
  -- land in any order without a rehash or a copy
  local size = math.min(count, 67108864)
  local out = self.answers:_list(size)
  local job = start_job("pool:map", self, fn, list, count, chunk, nil, out)
  -- a wait that raises (Ctrl-C, a thread cancelled) gives the map up: the
  -- chunks not started are dropped, as after a failure
  local ok, err = pcall(function()
    for _, t in ipairs(job.chunks) do
      await(self, t)
      local a = t.answer
      if not a[1] then
        -- the lowest failing index: every earlier chunk has succeeded (a
        -- failure's two values may have landed past its chunk, in the next
        -- one, which is never read then)
        error(chunk_error("pool:map", t), 0)
      end
      local r, base = a[2], t.first - 1
      if not r then                         -- in place already
      elseif move then move(r, 1, a[3], base + 1, out)
      else for i = 1, a[3] do out[base + i] = r[i] end end
    end
  end)
  if not ok then
    if not self.closed_up then abandon(self, job) end
    error(err, 0)
  end
  return out
end

-- An iterator over a job's results; `pick(job)` gives the next settled
-- chunk to yield from (or nil: wait).  On 5.4 the fourth value closes it
-- (a `break` out of the loop gives up the chunks not started).
local function job_iter(fname, self, job, pick)
  local t, i = nil, 0
  local closer = setmetatable({}, { __close = function() abandon(self, job) end })
  -- a failed chunk yields its items before the one that failed, then raises
  local function last(a) return a[1] and a[3] or math.max(0, (a[3] or 1) - 1) end
  local function step()
    while not t or i >= last(t.answer) do
      if t and not t.answer[1] then abandon(self, job); error(chunk_error(fname, t), 0) end
      t, i = pick(job), 0
      if t == false then return nil end
      if not t then
        -- a wait that raises (Ctrl-C, a cancel) ends the loop: the chunks
        -- not started are given up (5.1-5.3 and LuaJIT close no iterator)
        local ok, err = pcall(drain, self, FOREVER)
        if not ok then
          if not self.closed_up then abandon(self, job) end
          error(err, 0)
        end
      end
    end
    i = i + 1
    local a = t.answer
    return t.first + i - 1, (a[1] and a[2] or a[4])[i]
  end
  return step, nil, nil, closer
end

function Pool:imap(fn, list, chunk)
  local count = check_map("pool:imap", self, fn, list, chunk)
  local job = start_job("pool:imap", self, fn, list, count, chunk)
  local k = 0
  return job_iter("pool:imap", self, job, function(j)
    local t = j.chunks[k + 1]
    if not t then return false end
    if not t.answer then return nil end
    k = k + 1
    return t
  end)
end

function Pool:imap_unordered(fn, list, chunk)
  local count = check_map("pool:imap_unordered", self, fn, list, chunk)
  local done, head, tail, left = {}, 1, 0, nil
  local job = start_job("pool:imap_unordered", self, fn, list, count, chunk, function(t)
    tail = tail + 1
    done[tail] = t
  end)
  left = #job.chunks
  return job_iter("pool:imap_unordered", self, job, function()
    if left == 0 then return false end
    local t = done[head]
    if not t then return nil end
    done[head] = nil
    head, left = head + 1, left - 1
    return t
  end)
end

function Pool:close(timeout)
  check_pool("pool:close", self)
  check_timeout("pool:close", 1, timeout)
  if self.state == "closed" then return true end
  self.state = "closing"
  local pt = self.pt
  local deadline = timeout and pt.now() + timeout
  while self.qhead <= self.qtail or next(self.inflight) ~= nil do
    local left = deadline and deadline - pt.now() or FOREVER
    if left <= 0 then
      self:terminate()
      return nil, "timeout"
    end
    drain(self, left)
  end
  self.state = "closed"
  if self.closed_up then return true end  -- broken meanwhile (its initializer)
  stop_all(self, false, STOP_WAIT)
  drain(self)
  close_up(self)
  return true
end

function Pool:terminate()
  check_pool("pool:terminate", self)
  if self.closed_up then return true end
  terminate_workers(self)
  close_up(self)
  return true
end

Pool.__close = function(self) if is_pool(self) and self.pt._self_id() == self.owner then self:close() end end

-- pool:stats(): what the pool has done so far.
function Pool:stats()
  check_pool("pool:stats", self)
  drain(self)
  local live, busy = 0, 0
  for _ in pairs(self.slots) do live = live + 1 end
  for seq in pairs(self.inflight) do
    if type(self.claims[seq]) == "number" then busy = busy + 1 end
  end
  return { kind = self.kind, size = self.n, live = live, busy = busy,
           queued = self.qtail - self.qhead + 1 + self.ninflight - busy, started = self.started,
           completed = self.completed, deaths = self.deaths, state = self.state }
end

-- The ids of the live workers (pids or thread ids), slot by slot.
function Pool:workers()
  check_pool("pool:workers", self)
  local ids = {}
  for i = 1, self.n do
    local s = self.slots[i]
    if s then ids[#ids + 1] = s.w.id end
  end
  return ids
end

-- pool:fd(): a file descriptor that is readable while answers wait to be
-- read (by done, get, select...).  From the first call on, every answer
-- costs a worker one more shared-table add, and a pipe write when the
-- pipe was empty.
function Pool:fd()
  check_pool("pool:fd", self)
  if self.closed_up then return nil, "closed" end
  if not self.bell_on then
    -- workers ring from now on; answers that landed before are announced by
    -- one ring of ours (pt.add takes a lock, after the flag's store)
    self.bell_on = true
    self.flags[1] = 1
    if self.pt.add(self.claims, "rung", 1) == 1 then self.bell:send(true) end
  end
  return (self.bell:fds())
end

Pool.__tostring = function(self)
  return ("procthread.Pool (%s, %d workers, %s)"):format(self.kind, self.n, self.state)
end

-- ---- futures -------------------------------------------------------------

local function check_future(fname, self)
  if getmt(self) ~= Future then
    error(("%s: bad self (a future expected, got %s)"):format(fname, type(self)), 3)
  end
end

local function answer(self)
  local a = self.answer
  if a[1] then return unpack(a, 1, a.n) end
  return false, a[2]
end

function Future:get(timeout)
  check_future("future:get", self)
  check_timeout("future:get", 1, timeout)
  if self.answer then return answer(self) end
  local pool = self.pool
  check_owner("future:get", pool)
  if timeout == nil or timeout == FOREVER then
    while not self.answer do drain(pool, FOREVER) end
  else
    local pt = pool.pt
    local deadline = pt.now() + timeout
    drain(pool)
    while not self.answer do
      local left = deadline - pt.now()
      if left <= 0 then return nil, "timeout" end
      drain(pool, left)
    end
  end
  return answer(self)
end

function Future:done()
  check_future("future:done", self)
  if not self.answer and is_pool(self.pool) and self.pool.pt._self_id() == self.pool.owner then
    drain(self.pool)
  end
  return self.answer ~= nil
end

-- future:cancel() -> true if the task had not started (it then answers
-- false, "cancelled"); false once it runs or has an answer.
function Future:cancel()
  check_future("future:cancel", self)
  local pool = self.pool
  if self.answer then return self.answer.cancelled == true end
  check_owner("future:cancel", pool)
  drain(pool)
  if self.answer then return false end
  if self.seq and not pool.pt.cas(pool.claims, self.seq, nil, "cancelled") then return false end
  if self.seq then
    -- won the claim: the worker may still have run it and cleared its
    -- claim just before; its answer is then in the channel already
    drain(pool)
    if self.answer then return false end
  end
  drop(pool, self, "cancelled")
  self.answer.cancelled = true
  return true
end

-- "queued", "running", "succeeded", "failed", "cancelled"
function Future:status()
  check_future("future:status", self)
  self:done()
  local a = self.answer
  if a then return a.cancelled and "cancelled" or (a[1] and "succeeded" or "failed") end
  if self.seq and type(self.pool.claims[self.seq]) == "number" then return "running" end
  return "queued"
end

Future.__tostring = function(self)
  local a = self.answer
  return ("procthread.Future (task %d, %s)"):format(self.id,
    a and (a.cancelled and "cancelled" or a[1] and "succeeded" or "failed") or "pending")
end

-- ---- waiting for many: pt.select and pt.as_completed with futures -------

-- Waiting on the pools of futures: the pool's bell pipe, so that pt.select
-- (pipes today) can sleep on pools, pipes and the rest together.  When the
-- C select takes channels, `waitable` may return pool.answers instead.
local function waitable(pool)
  pool:fd()
  return pool.bell
end

local function is_future(x) return getmt(x) == Future end
P.is_future = is_future

-- The errors of select and as_completed carry no position: the wrappers
-- of procthread (init.lua) raise them at their caller's line.
-- The C core's errors name the entry by its index in the caller's list
-- (at[j]: the index of probe[j]) and the function called (fname).
local function core_error(fname, r, at)
  if type(r) == "string" then
    r = r:gsub("list%[(%d+)%]", function(k) return "list[" .. tostring(at[tonumber(k)] or k) .. "]" end)
      :gsub("^bad argument #1 to '[%w_]+'", "bad argument #1 to '" .. fname .. "'")
  end
  error(r, 0)
end

local rawlen = rawlen or function(t) return #t end

-- The list is read as the C select reads it (entries 1 to its raw length:
-- a nil among them is refused, what follows the border is no entry), and
-- checked as it checks it, the first bad entry named: the entries that
-- are not futures by the core's as_completed, which checks its list at the
-- call and waits for nothing (for select, only before a nil: its first C
-- select checks them, plain_too false).
local function check_list(fname, list, timeout, plain_too)
  if type(list) ~= "table" then
    error(("bad argument #1 to '%s' (table expected, got %s)"):format(fname, type(list)), 0)
  end
  if timeout ~= nil and (type(timeout) ~= "number" or not (timeout >= 0)) then
    error(("bad argument #2 to '%s' (timeout must be a number >= 0 or math.huge, got %s)")
      :format(fname, got(timeout)), 0)
  end
  local plain, at, hole = {}, {}, nil
  for i = 1, rawlen(list) do
    local x = rawget(list, i)
    if x == nil then hole = i; break end
    if not is_future(x) then plain[#plain + 1], at[#plain + 1] = x, i end
  end
  local core = require "procthread.core"
  if plain[1] and (plain_too or hole) and core.as_completed then
    local ok, err = pcall(core.as_completed, plain)
    if not ok then core_error(fname, err, at) end
  end
  if hole then
    error(("bad argument #1 to '%s' (list[%d] is a nil, not a pipe, channel or worker)"):format(fname, hole), 0)
  end
end

-- The C select over `probe` (the entries that are not futures, and the
-- bells of the futures' pools).
local function probe_select(fname, core_select, probe, at, t)
  local ok, r, j = pcall(core_select, probe, t)
  if ok then return r, j end
  core_error(fname, r, at)
end

-- pt.select with futures (fname: the function called, select or
-- as_completed): the first ready entry of the list (a future with an
-- answer, or what the C select finds ready) and its index.
local function select_in(fname, core_select, list, timeout)
  local pt = P.pt or require "procthread"
  local deadline = timeout and timeout ~= FOREVER and pt.now() + timeout
  local pools, probe, at, bells = {}, {}, {}, {}
  local plain = 0
  for i = 1, #list do
    local x = list[i]
    if not is_future(x) then plain = plain + 1
    elseif not pools[x.pool] then
      pools[x.pool] = i
      pools[#pools + 1] = x.pool
    end
  end
  local mixed = plain > 0 or #pools > 1
  for i = 1, #list do
    local x = list[i]
    if not is_future(x) then
      probe[#probe + 1], at[#probe + 1] = x, i
    elseif mixed and pools[x.pool] == i and not x.pool.closed_up then
      -- the bells ring from now on: an answer that lands after the
      -- futures were looked at below rings the bell the select sleeps on;
      -- each in the place of its pool's first future
      local b = waitable(x.pool)
      bells[b] = x.pool
      probe[#probe + 1], at[#probe + 1] = b, i
    end
  end
  while true do
    local best
    for i = 1, #list do
      local x = list[i]
      if is_future(x) and x:done() then best = i; break end
    end
    local left = deadline and math.max(0, deadline - pt.now()) or FOREVER
    if not mixed then
      if best then return list[best], best end
      if deadline and left <= 0 then return nil, "timeout" end
      if #pools == 0 then return nil, "timeout" end      -- nothing can become ready
      local pool = pools[1]
      if pt._self_id() ~= pool.owner then
        error(("%s: this pool belongs to another process (pid %d)"):format(fname, pool.owner), 0)
      end
      drain(pool, left)
    else
      -- what is ready before the first answered future wins; then that
      -- future; else sleep on all
      local r, j = probe_select(fname, core_select, probe, at, (best or left <= 0) and 0 or left)
      if r == nil then
        if best then return list[best], best end
        if j ~= "timeout" then return nil, j end
        if deadline and pt.now() >= deadline then return nil, "timeout" end
      elseif not bells[r] then
        if not best or at[j] < best then return r, at[j] end
        return list[best], best
      else
        -- a bell: its pool has answers (read now: that empties the bell); look again
        local pool = bells[r]
        if pt._self_id() ~= pool.owner then
          error(("%s: this pool belongs to another process (pid %d)"):format(fname, pool.owner), 0)
        end
        drain(pool)
      end
    end
  end
end

function P.select(core_select, list, timeout)
  check_list("select", list, timeout)
  return select_in("select", core_select, list, timeout)
end

function P.as_completed(core_select, list, timeout)
  check_list("as_completed", list, timeout, true)
  local pt = P.pt or require "procthread"
  local left, seen = {}, {}
  for i = 1, rawlen(list) do              -- each once, as Python's
    local x = rawget(list, i)
    if not seen[x] then seen[x] = true; left[#left + 1] = x end
  end
  local deadline = timeout and timeout ~= FOREVER and pt.now() + timeout
  return function()
    if #left == 0 then return nil end
    local ok, r, i = pcall(select_in, "as_completed", core_select, left, deadline and math.max(0, deadline - pt.now()) or timeout)
    -- at the caller's line, unless it has a place already (an interrupt)
    if not ok then error(r, (type(r) == "string" and r:find("^[^\n]-:%d+: ")) and 0 or 2) end
    if r == nil then return nil, i end
    table.remove(left, i)
    return r
  end
end

P.Pool, P.Future = Pool, Future
P.worker_main = worker_main
return P
