-- bench/select_bench.lua: pt.select's wake-up against a direct recv/join on
-- the same object, in alternating rounds (issue 11: select on a channel
-- wakes within 1.2x a direct recv).
--
--   lua5.4 bench/select_bench.lua [build/5.4]
--
-- pingpong: a worker answers each message of channel a on channel b; its
-- wait is a:recv() ("recv"), pt.select{a} then a:recv() ("select"), or
-- pt.select{a, p} with a pipe p beside it ("mixed": the helper-thread
-- path).  Round trip in microseconds, the median of the rounds.
package.path = "bench/?.lua;" .. package.path
local pt = require "procthread"
io.stdout:setvbuf("line")

local function pingpong(kind, how, n)
  local a, b, p = pt.channel(1), pt.channel(1), pt.pipe()
  local w = pt.spawn(kind, function(x, y, q, k, h)
    local pt = require "procthread"
    local set = h == "mixed" and { x, q } or { x }
    for _ = 1, k do
      if h ~= "recv" then assert(pt.select(set) == x) end
      y:send(x:recv())
    end
    return true
  end, a, b, p, n, how)
  local t0 = pt.now()
  for i = 1, n do a:send(1); assert(b:recv(10), "lost wake-up at " .. i .. " (" .. how .. ")") end
  local rtt = (pt.now() - t0) / n * 1e6
  assert(w:join(60))
  p:close()
  return rtt
end

-- One wake-up of a worker asleep in the kernel: the time from the send to
-- the worker's answer, for a worker in recv or in select (then recv).
local function wake_once(kind, how)
  local a, b = pt.channel(1), pt.channel(1)
  local w = pt.spawn(kind, function(x, y, h)
    local pt = require "procthread"
    if h == "select" then assert(pt.select({ x }) == x) end
    x:recv()
    y:send(pt.now())
    return true
  end, a, b, how)
  pt.sleep(0.01)                                 -- asleep by now
  local t0 = pt.now()
  a:send(1)
  local t = (b:recv() - t0) * 1e6
  assert(w:join(60))
  return t
end

-- rounds of both, alternating (the machine's mood falls on both alike);
-- the medians, and the median of the rounds' ratios
local function wake(kind, rounds)
  local tr, tsel, ratio = {}, {}, {}
  for i = 1, rounds do
    local a, b
    if i % 2 == 1 then a = wake_once(kind, "recv"); b = wake_once(kind, "select")
    else b = wake_once(kind, "select"); a = wake_once(kind, "recv") end
    tr[#tr + 1], tsel[#tsel + 1], ratio[#ratio + 1] = a, b, b / a
  end
  table.sort(tr); table.sort(tsel); table.sort(ratio)
  local mid = (rounds + 1) // 2 | 0
  return tr[mid], tsel[mid], ratio[mid]
end

local function median(t) table.sort(t); return t[(#t + 1) // 2 | 0] end

for _, kind in ipairs({ "thread", "process" }) do
  local r = { recv = {}, select = {}, mixed = {} }
  for _ = 1, 5 do
    for _, how in ipairs({ "recv", "select", "mixed" }) do
      table.insert(r[how], pingpong(kind, how, how == "mixed" and 2000 or kind == "thread" and 20000 or 5000))
    end
  end
  local rr, rs, rm = median(r.recv), median(r.select), median(r.mixed)
  print(("pingpong %-7s rtt_us recv %.2f  select %.2f (%.2fx)  mixed %.2f (%.2fx)"):format(
    kind, rr, rs, rs / rr, rm, rm / rr))
  local wr, ws, ratio = wake(kind, 31)
  print(("wake     %-7s us     recv %.1f  select %.1f (median of the rounds' ratios %.2fx, target <= 1.2)"):format(
    kind, wr, ws, ratio))
end
