-- procthread.pool: pools of threads or of processes that run tasks.
--
--   local pool = pt.pool("process", 4, { max_tasks = 100 })
--   local f = pool:submit(function(a, b) return a + b end, 1, 2)
--   print(f:get(5))                       --> true  3
--   print(pool:map(function(x) return x * x end, { 1, 2, 3 })[3])  --> 9
--   pool:close()
--
-- How it works.  Each worker (a thread or a forked process, started once and
-- reused) runs `worker_main`: it reads tasks from a task pipe of its own and
-- writes answers on a result pipe the whole pool shares.  A task is the
-- function and its arguments encoded by the codec (pt.encode), for both
-- kinds.  The pool has no thread of its own in the caller: it makes progress
-- whenever it is called (submit, future:get/done, map, close), handing
-- queued tasks to idle workers, reading answers, and looking at its workers
-- every SLICE seconds so that a worker that died is noticed, its task failed
-- ("worker died: killed by signal 9 (SIGKILL)") and the worker replaced.
-- A worker holds one task at a time, so the pool always knows which task a
-- dead worker had, and a task that never reached a worker is never lost.
--
-- Documented in docs/api.md (Pools).
local unpack = unpack or table.unpack

local P = {}

local SLICE = 0.02        -- seconds between looks at the workers while waiting
local STOP_WAIT = 5       -- seconds a stopping worker gets before it is killed

local Pool = {}
Pool.__index = Pool
local Future = {}
Future.__index = Future

local function pack(...) return { n = select("#", ...), ... } end

-- The error is the caller's: `level` counts from argerr's caller (1).
local function argerr(fname, i, msg, level)
  error(("%s: bad argument #%d (%s)"):format(fname, i, msg), 2 + (level or 1))
end

local function check_timeout(fname, i, t)
  if t ~= nil and (type(t) ~= "number" or t ~= t or t < 0) then
    argerr(fname, i, "timeout must be a number >= 0 or nil, got " ..
      (type(t) == "number" and tostring(t) or type(t)), 2)
  end
end

-- ---- the worker: runs in a thread (copied by the codec) or in a forked
-- process.  It may capture nothing from this module: everything it needs
-- comes in as arguments or is required inside.

local function worker_main(kind, tasks, results, slot, ppid, close_list)
  local pt = require "procthread"
  local unpack = unpack or table.unpack
  local function pack(...) return { n = select("#", ...), ... } end
  if kind == "process" then
    -- ends this process does not use: keeping them open would hide the end
    -- of a stream from their real owners
    for i = 1, #close_list do pcall(close_list[i].close, close_list[i]) end
    tasks:close_write()
    results:close_read()
  end
  -- a process worker whose parent is gone (it died without closing the
  -- pool) leaves by itself
  local function orphaned()
    local f = io.open("/proc/self/stat")
    if not f then return false end
    local s = f:read("*l"); f:close()
    local pp = s and tonumber(s:match(".*%)%s+%S+%s+(%d+)"))
    return pp ~= nil and pp ~= ppid
  end
  local function handler(e)
    if type(e) ~= "string" then
      local mt = getmetatable(e)
      if type(mt) == "table" and mt.__tostring then e = tostring(e)
      else e = "(error object is a " .. type(e) .. " value)" end
    end
    -- the traceback stops at the task's function, as join's does
    local tb = debug.traceback(e, 2)
    local cut = tb:find("\n%s*%[C%]: in function '?xpcall'?")
    if cut then
      tb = tb:sub(1, cut - 1)
      tb = tb:gsub("\n%s*%(%.%.%.tail calls%.%.%.%)$", ""):gsub("\n%s*%(tail call%): %?$", "")
    end
    return tb
  end
  local function reply(id, ok, a, b)
    local sent, err = pcall(results.send, results, slot, id, ok, a, b)
    if not sent then
      results:send(slot, id, false, "results: " .. tostring(err))
    end
  end
  local done = 0
  while true do
    local op, id, payload
    if kind == "process" then
      op, id, payload = tasks:recv(1)
      if op == nil and id == "timeout" then
        if orphaned() then break end
        op = "idle"
      end
    else
      op, id, payload = tasks:recv()       -- a cancellation point
    end
    if op == nil or op == "stop" then break end
    if op == "call" then
      local r = pack(xpcall(function()
        local t = pack(pt.decode(payload))
        return t[1](unpack(t, 2, t.n))
      end, handler))
      if pt.cancelled() then break end
      if r[1] then
        local ok, enc = pcall(pt.encode, unpack(r, 2, r.n))
        if ok then reply(id, true, enc) else reply(id, false, "results: " .. tostring(enc)) end
      else
        reply(id, false, r[2])
      end
      done = done + 1
    elseif op == "map" then
      local out, failed_at, ferr = {}, nil, nil
      local ok, e = xpcall(function()
        local fn, items, count = pt.decode(payload)
        for i = 1, count do
          local r = pack(xpcall(function() return fn(items[i]) end, handler))
          if not r[1] then failed_at, ferr = i, r[2]; return end
          out[i] = r[2]
        end
      end, handler)
      if pt.cancelled() then break end
      if not ok then reply(id, false, e, 0)
      elseif failed_at then reply(id, false, ferr, failed_at)
      else
        local eok, enc = pcall(pt.encode, out)
        if eok then reply(id, true, enc) else reply(id, false, "results: " .. tostring(enc), 0) end
      end
      done = done + 1
    end
  end
  return done
end

-- ---- the pool ------------------------------------------------------------

local function is_pool(p) return getmetatable(p) == Pool end

-- The pid of this process (pt.self().id is a thread id inside a thread).
local function getpid()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local s = f:read("*l"); f:close()
  return s and tonumber(s:match("^(%d+)"))
end

local function check_pool(fname, self)
  if not is_pool(self) then
    error(("%s: bad self (a pool expected, got %s; call it as pool:%s(...))")
      :format(fname, type(self), fname:match("[%.:](%w+)$") or "method"), 3)
  end
  if self.pt.self().id ~= self.owner then
    error(("%s: this pool belongs to another process (pid %d)"):format(fname, self.owner), 3)
  end
end

-- Start the worker of slot i (a fresh task pipe each time).
local function start_worker(self, i)
  local pt = self.pt
  local tasks, perr = pt.pipe()
  if not tasks then return nil, perr end
  local close_list = {}
  if self.kind == "process" then
    for j, s in pairs(self.slots) do
      if j ~= i and s.tasks then close_list[#close_list + 1] = s.tasks end
    end
    for _, r in ipairs(self.retired) do close_list[#close_list + 1] = r.tasks end
  end
  local ok, w, werr = pcall(pt.spawn, self.kind, worker_main, self.kind, tasks, self.results,
    i, self.pid, close_list)
  if not ok or not w then
    tasks:close()
    return nil, tostring(ok and werr or w)
  end
  -- the parent only writes a process worker's task pipe: with the read
  -- end closed here, a send to a dead worker says "closed" at once
  if self.kind == "process" then tasks:close_read() end
  pt._daemon(w)                  -- at exit: stopped, never waited for
  self.slots[i] = { w = w, tasks = tasks, task = nil, count = 0 }
  self.started = self.started + 1
  return true
end

-- A task that never reached a worker releases what its payload holds
-- (shared objects, pipes): nobody will decode it.
local function settle(task, ...)
  if task.answer then return end
  task.answer = pack(...)
  if task.state == "queued" then task.pool.pt.discard(task.payload) end
  task.state = "done"
  task.payload = nil
  if task.pool.running[task.id] == task then task.pool.running[task.id] = nil end
end

-- A finished task's answer from its worker.
local function on_result(self, slot, id, ok, a, b)
  local task = self.running[id]
  if not task then                     -- already settled (terminated): a late answer
    if ok then self.pt.discard(a) end
    return
  end
  local s = self.slots[task.slot]
  if s and s.task == task then
    s.task = nil
    s.count = s.count + 1
  end
  local pt = self.pt
  if task.op == "call" then
    if ok then
      local r = pack(pcall(pt.decode, a))
      if r[1] then settle(task, true, unpack(r, 2, r.n))
      else settle(task, false, "results: " .. tostring(r[2])) end
    else
      settle(task, false, a)
    end
  else                                  -- a chunk of a map
    if ok then
      local dok, t = pcall(pt.decode, a)
      if dok then settle(task, true, t) else settle(task, false, "results: " .. tostring(t), 0) end
    else
      settle(task, false, a, b)
    end
  end
  self.completed = self.completed + 1
  -- max_tasks: retire the worker (it is idle now) and start another
  if s and s.task == nil and self.max_tasks and s.count >= self.max_tasks and self.state ~= "closed" then
    pcall(s.tasks.send, s.tasks, "stop")
    self.retired[#self.retired + 1] = { w = s.w, tasks = s.tasks, since = pt.now() }
    self.slots[task.slot] = nil
    local started, err = start_worker(self, task.slot)
    if not started then self.spawn_error = err end
  end
end

-- Read every answer already in the result pipe (wait up to `wait` for the
-- first).  Returns the number read.
local function drain(self, wait)
  local got = 0
  local r = self.results
  while true do
    local m = pack(pcall(r.recv, r, got == 0 and wait or 0))
    -- an interrupt (Ctrl-C: the interpreter's "interrupted!", raised here
    -- on 5.4) is the caller's, never the pool's to swallow
    if m[1] and m[2] == nil and m[3] == "interrupted" then error("interrupted", 2) end
    if not m[1] and m[2] ~= "corrupt message" then error(m[2], 0) end
    if not m[1] then
      -- "corrupt message": the pipe skips to the next valid frame on the
      -- next recv; a dead writer is found by check_workers
      self.last_error = tostring(m[2])
      return got
    end
    if m[2] == nil then
      if m[3] == "timeout" or m[3] == "closed" then return got end
      -- "lost message" (a writer died mid-message): the dead worker is
      -- found by check_workers; go on with the next message
    else
      got = got + 1
      on_result(self, m[2], m[3], m[4], m[5], m[6])
    end
  end
end

-- Close the task pipe of a worker that has ended.  A thread worker's pipe
-- is this process's own: a task the thread never read is released here.
local function close_tasks(self, tasks)
  while self.kind == "thread" do
    local ok, op, _, payload = pcall(tasks.recv, tasks, 0)
    if not ok or op == nil then break end
    if type(payload) == "string" then self.pt.discard(payload) end
  end
  pcall(tasks.close, tasks)
end

local function join_or_kill(w, timeout)
  local r = pack(w:join(timeout))
  if r[1] == nil and r[2] == "timeout" then
    if w.kind == "process" then pcall(w.kill, w, "KILL") else pcall(w.cancel, w) end
    r = pack(w:join(STOP_WAIT))
  end
  return unpack(r, 1, r.n)
end

-- Look at every worker: one that ended fails the task it held, with the
-- reason, and is replaced.  Retired workers that ended are reaped.
local function check_workers(self)
  local pt = self.pt
  self.last_check = pt.now()
  local dead
  for i, s in pairs(self.slots) do
    if s.w:status() ~= "running" then
      dead = dead or {}
      dead[#dead + 1] = i
    end
  end
  if dead then
    drain(self, 0)                 -- what a dead worker sent before it died counts
    for _, i in ipairs(dead) do
      local s = self.slots[i]
      local r = pack(s.w:join(0))
      local why
      if r[1] == false then why = tostring(r[2])
      elseif r[1] == true then why = "worker ended"
      else why = "worker ended" end
      self.slots[i] = nil
      close_tasks(self, s.tasks)
      self.deaths = self.deaths + 1
      if s.task then settle(s.task, false, "worker died: " .. why, 0) end
      if self.state ~= "closed" then
        local ok, err = start_worker(self, i)
        if not ok then self.spawn_error = err end
      end
    end
  end
  local keep = {}
  for _, r in ipairs(self.retired) do
    local j = r.w:join(0)
    if j == nil and pt.now() - r.since > STOP_WAIT then j = join_or_kill(r.w, 0) end
    if j == nil then keep[#keep + 1] = r else close_tasks(self, r.tasks) end
  end
  self.retired = keep
end

-- Refill empty slots (a replacement that could not start before) and hand
-- queued tasks to idle workers.
local function dispatch(self)
  local live = 0
  for i = 1, self.n do
    if not self.slots[i] and self.state ~= "closed" then
      local ok, err = start_worker(self, i)
      if not ok then self.spawn_error = err end
    end
    if self.slots[i] then live = live + 1 end
  end
  if live == 0 and self.qhead <= self.qtail then
    -- no worker can be started: fail what waits rather than wait forever
    while self.qhead <= self.qtail do
      local task = self.queue[self.qhead]
      self.queue[self.qhead] = nil
      self.qhead = self.qhead + 1
      settle(task, false, "pool: cannot start a worker: " .. tostring(self.spawn_error), 0)
    end
    return
  end
  for i = 1, self.n do
    if self.qhead > self.qtail then return end
    local s = self.slots[i]
    if s and not s.task then
      local task = self.queue[self.qhead]
      self.queue[self.qhead] = nil
      self.qhead = self.qhead + 1
      if not task.answer then          -- a cancelled map chunk is skipped
        local ok, sent, err = pcall(s.tasks.send, s.tasks, task.op, task.id, task.payload)
        if ok and sent then
          s.task = task
          task.slot = i
          task.state = "running"
          self.running[task.id] = task
        elseif ok then
          -- "closed": the worker is gone and never saw the task; put it back
          self.qhead = self.qhead - 1
          self.queue[self.qhead] = task
          check_workers(self)
          if not self.slots[i] or self.slots[i] == s then return end
        else
          settle(task, false, "pool: " .. tostring(sent), 0)
        end
      end
    end
  end
end

-- One round of progress: hand out tasks, wait up to `wait` seconds for an
-- answer, look at the workers when it is time.
local function step(self, wait)
  dispatch(self)
  local busy = next(self.running) ~= nil
  if busy then
    drain(self, math.min(wait, SLICE))
  elseif wait > 0 then
    self.pt.sleep(math.min(wait, SLICE))
  end
  if self.pt.now() - self.last_check >= SLICE then check_workers(self) end
  dispatch(self)
end

function P.new(pt, kind, n, opts)
  local fname = "procthread.pool"
  if kind ~= "thread" and kind ~= "process" then
    argerr(fname, 1, "kind must be \"thread\" or \"process\", got " ..
      (type(kind) == "string" and ("%q"):format(kind) or type(kind)))
  end
  if type(n) ~= "number" or n ~= n or n < 1 or n ~= math.floor(n) or n > 1024 then
    argerr(fname, 2, "n must be an integer from 1 to 1024, got " .. (type(n) == "number" and tostring(n) or type(n)))
  end
  if opts ~= nil and type(opts) ~= "table" then argerr(fname, 3, "options table expected, got " .. type(opts)) end
  opts = opts or {}
  local mt = opts.max_tasks
  if mt ~= nil and (type(mt) ~= "number" or mt < 1 or mt ~= math.floor(mt)) then
    argerr(fname, 3, "opts.max_tasks must be an integer >= 1, got " .. tostring(mt))
  end
  for k in pairs(opts) do
    if k ~= "max_tasks" then argerr(fname, 3, ("unknown option %q"):format(tostring(k))) end
  end
  local results, err = pt.pipe()
  if not results then error(fname .. ": " .. tostring(err), 2) end
  local self = setmetatable({
    pt = pt, kind = kind, n = n, max_tasks = mt, owner = pt.self().id, pid = getpid(),
    results = results, slots = {}, retired = {}, running = {},
    queue = {}, qhead = 1, qtail = 0, next_id = 0, state = "open",
    started = 0, completed = 0, deaths = 0, last_check = pt.now(),
  }, Pool)
  for i = 1, n do
    local ok, e = start_worker(self, i)
    if not ok then
      self:terminate()
      error(("%s: cannot start worker %d of %d: %s"):format(fname, i, n, tostring(e)), 2)
    end
  end
  -- a pool dropped without close(): end the workers' task streams so that
  -- they leave by themselves (the handles themselves reap or detach)
  local slots, queue = self.slots, self.queue
  local function finalize()
    for _, s in pairs(slots) do if s.tasks then pcall(s.tasks.close_write, s.tasks) end end
    for _, task in pairs(queue) do settle(task, false, "pool collected", 0) end
  end
  if _VERSION == "Lua 5.1" and newproxy then
    local proxy = newproxy(true)
    getmetatable(proxy).__gc = finalize
    self.gc_proxy = proxy
  else
    self.gc_proxy = setmetatable({}, { __gc = finalize })
  end
  return self
end

local function enqueue(self, op, payload)
  self.next_id = self.next_id + 1
  local task = setmetatable({ pool = self, id = self.next_id, op = op, payload = payload, state = "queued" }, Future)
  self.qtail = self.qtail + 1
  self.queue[self.qtail] = task
  return task
end

function Pool:submit(fn, ...)
  check_pool("pool:submit", self)
  if self.state ~= "open" then error("pool:submit: the pool is closed", 2) end
  if type(fn) ~= "function" then argerr("pool:submit", 1, "function expected, got " .. type(fn)) end
  local ok, payload = pcall(self.pt.encode, fn, ...)
  if not ok then error("pool:submit: " .. tostring(payload), 2) end
  local task = enqueue(self, "call", payload)
  dispatch(self)
  drain(self, 0)
  return task
end

-- map: the list goes out in chunks (a few per worker), each one task.
function Pool:map(fn, list, chunk)
  check_pool("pool:map", self)
  if self.state ~= "open" then error("pool:map: the pool is closed", 2) end
  if type(fn) ~= "function" then argerr("pool:map", 1, "function expected, got " .. type(fn)) end
  if type(list) ~= "table" then argerr("pool:map", 2, "table expected, got " .. type(list)) end
  local count = #list
  if chunk ~= nil and (type(chunk) ~= "number" or chunk < 1 or chunk ~= math.floor(chunk)) then
    argerr("pool:map", 3, "chunk size must be an integer >= 1, got " .. tostring(chunk))
  end
  chunk = chunk or math.max(1, math.min(1000, math.ceil(count / (self.n * 4))))
  local futures = {}
  for first = 1, count, chunk do
    local last = math.min(count, first + chunk - 1)
    local items = {}
    for i = first, last do items[i - first + 1] = list[i] end
    local ok, payload = pcall(self.pt.encode, fn, items, last - first + 1)
    if not ok then
      for _, f in ipairs(futures) do settle(f.task, false, "cancelled", 0) end
      error(("pool:map: items %d-%d: %s"):format(first, last, tostring(payload)), 2)
    end
    futures[#futures + 1] = { first = first, task = enqueue(self, "map", payload) }
  end
  dispatch(self)
  local out = {}
  for k, f in ipairs(futures) do
    local task = f.task
    while not task.answer do step(self, 1) end
    local a = task.answer
    if not a[1] then
      -- the lowest failing index: every earlier chunk has succeeded; give
      -- up the chunks not yet started
      for j = k + 1, #futures do
        local t = futures[j].task
        if t.state == "queued" then settle(t, false, "cancelled", 0) end
      end
      local at = (a[3] and a[3] > 0) and (f.first + a[3] - 1) or f.first
      error(("pool:map: item %d failed: %s"):format(at, tostring(a[2])), 0)
    end
    local t = a[2]
    for i = 1, chunk do
      local v = t[i]
      if v ~= nil then out[f.first + i - 1] = v end
    end
  end
  return out
end

-- Stop the workers (each gets "stop"; join with `timeout`, then kill),
-- close the pipes.
local function shutdown(self, timeout)
  local ws = {}
  for i = 1, self.n do
    local s = self.slots[i]
    if s then
      pcall(s.tasks.send, s.tasks, "stop")
      ws[#ws + 1] = s
    end
    self.slots[i] = nil
  end
  for _, r in ipairs(self.retired) do ws[#ws + 1] = r end
  self.retired = {}
  local clean = true
  local deadline = self.pt.now() + timeout
  for _, s in ipairs(ws) do
    local left = math.max(0, deadline - self.pt.now())
    local r = pack(join_or_kill(s.w, left))
    if r[1] == nil then clean = false end
    close_tasks(self, s.tasks)
  end
  drain(self, 0)                       -- answers nobody waits for are released
  pcall(self.results.close, self.results)
  return clean
end

function Pool:close(timeout)
  check_pool("pool:close", self)
  check_timeout("pool:close", 1, timeout)
  if self.state == "closed" then return true end
  self.state = "closing"
  local pt = self.pt
  local deadline = timeout and pt.now() + timeout
  while self.qhead <= self.qtail or next(self.running) ~= nil do
    if deadline and pt.now() >= deadline then
      self:terminate()
      return nil, "timeout"
    end
    step(self, deadline and math.max(0, deadline - pt.now()) or 1)
  end
  self.state = "closed"
  shutdown(self, STOP_WAIT)
  return true
end

function Pool:terminate()
  check_pool("pool:terminate", self)
  if self.state == "closed" and not next(self.slots) then return true end
  self.state = "closed"
  while self.qhead <= self.qtail do
    local task = self.queue[self.qhead]
    self.queue[self.qhead] = nil
    self.qhead = self.qhead + 1
    settle(task, false, "pool terminated", 0)
  end
  for _, task in pairs(self.running) do settle(task, false, "pool terminated", 0) end
  self.running = {}
  for i = 1, self.n do
    local s = self.slots[i]
    if s then
      if s.w.kind == "process" then pcall(s.w.kill, s.w, "KILL") else pcall(s.w.cancel, s.w) end
    end
  end
  shutdown(self, 0)
  return true
end

-- pool:stats(): what the pool has done so far.
function Pool:stats()
  check_pool("pool:stats", self)
  local busy, live = 0, 0
  for _, s in pairs(self.slots) do
    live = live + 1
    if s.task then busy = busy + 1 end
  end
  return { kind = self.kind, size = self.n, live = live, busy = busy,
           queued = self.qtail - self.qhead + 1, started = self.started,
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

Pool.__tostring = function(self)
  return ("procthread.Pool (%s, %d workers, %s)"):format(self.kind, self.n, self.state)
end

-- ---- futures -------------------------------------------------------------

local function check_future(fname, self)
  if getmetatable(self) ~= Future then
    error(("%s: bad self (a future expected, got %s)"):format(fname, type(self)), 3)
  end
end

function Future:get(timeout)
  check_future("future:get", self)
  check_timeout("future:get", 1, timeout)
  local pool = self.pool
  if not self.answer then
    check_pool("future:get", pool)
    local pt = pool.pt
    local deadline = timeout and pt.now() + timeout
    while not self.answer do
      local left = deadline and deadline - pt.now() or 1
      if left <= 0 then
        step(pool, 0)
        if not self.answer then return nil, "timeout" end
      else
        step(pool, left)
      end
    end
  end
  local a = self.answer
  if a[1] then return unpack(a, 1, a.n) end
  return false, a[2]
end

function Future:done()
  check_future("future:done", self)
  if not self.answer and is_pool(self.pool) and self.pool.pt.self().id == self.pool.owner then
    step(self.pool, 0)
  end
  return self.answer ~= nil
end

-- "queued", "running", "succeeded", "failed"
function Future:status()
  check_future("future:status", self)
  self:done()
  if self.answer then return self.answer[1] and "succeeded" or "failed" end
  return self.state
end

Future.__tostring = function(self)
  return ("procthread.Future (task %d, %s)"):format(self.id, self.answer and (self.answer[1] and "succeeded" or "failed") or self.state)
end

P.Pool, P.Future = Pool, Future
P.worker_main = worker_main
return P
