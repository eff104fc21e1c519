-- fuzz/make_corpus.lua: write the seed corpus (fuzz/corpus/) from real
-- frames, as a pipe carries them.  Run from the checkout with a build:
--   LUA_CPATH='build/5.4/?.so;;' LUA_PATH='lua/?.lua;lua/?/init.lua;;' lua5.4 fuzz/make_corpus.lua
local pt = require "procthread"

-- Everything a send of these values writes into the pipe.
local function frames(...)
  local p = pt.pipe()
  local n = select("#", ...)
  local vals = { ... }
  for i = 1, n do p:send(vals[i]) end
  local r = p:fds()
  p:close_write()
  local f = assert(io.open("/proc/self/fd/" .. r, "rb"))
  local s = f:read("*a")
  f:close(); p:close()
  return s
end

local function save(name, bytes)
  local f = assert(io.open("fuzz/corpus/" .. name, "wb"))
  f:write(bytes); f:close()
end

local up = { 1, 2, 3 }
local cyc = { name = "cycle" }; cyc.self = cyc
local one = frames("hello")
save("one_string", one)
save("scalars", frames(nil, true, false, 42, -0.5, 2^53, "bin\0ary"))
save("table_cycle", frames(cyc))
save("nested", frames({ a = { b = { c = { 1, 2, { "deep" } } } }, [true] = "yes" }))
save("function_upvalues", frames(function(x) return up[x] end))
save("c_function_and_module", frames(string.format, math))
save("two_chunks", frames(("x"):rep(5000)))
save("many_messages", frames(1, "two", { 3 }, 4.5))
save("garbage_then_frame", "not a frame at all" .. one)
save("truncated", one:sub(1, #one - 3))
-- a message whose sender died after its first chunk, then a whole one
local two = frames(("y"):rep(9000))
save("first_chunk_only", two:sub(1, 4096) .. one)
print("corpus written")
