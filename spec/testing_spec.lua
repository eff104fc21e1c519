-- procthread.testing used as a user would: a project of one's own with a
-- .busted file as the README shows it, specs that load the module, and
-- Debian's busted run in that folder.  The leak check must pass a clean
-- test, fail a leaking one with what it left, and the fresh-interpreter
-- runner must survive a crash.
local H = require "helper"
local T = require "procthread.testing"

local LUA = H.interpreter()
collectgarbage(); collectgarbage()

local q, sh = H.shell_quote, H.sh

-- where this checkout keeps the Lua code and the C module of this Lua
local init = assert(H.searchpath("procthread", package.path))
local core = assert(H.searchpath("procthread.core", package.cpath))
local CWD = io.popen("pwd"):read("*l")
collectgarbage(); collectgarbage()
local function absolute(d) return d:sub(1, 1) == "/" and d or CWD .. "/" .. d end
local LUADIR = absolute(init:match("^(.*)/procthread/init%.lua$"))
local SODIR = absolute(core:match("^(.*)/procthread/core%.so$"))

local USER_SPEC = [[
local T = require "procthread.testing"
local pt = require "procthread"

describe("a user's pool", function()
  T.no_leaks()

  it("joins what it spawns", function()
    local w = pt.spawn("thread", function() return 42 end)
    local ok, v = w:join(5)
    assert.is_true(ok); assert.are.equal(42, v)
  end)

  it("forgets a pipe", function()
    KEPT = assert(pt.pipe())
  end)

  it("crashes in a fresh interpreter only", function()
    local status, out = T.fresh('require("procthread").fault("segv")')
    assert.are_not.equal(0, status, out)
  end)

  it("is not written yet", function()
    return pending("later")
  end)
end)
]]

describe("procthread.testing", function()
  H.no_leaks()

  it("offers every helper the project's specs use", function()
    for _, name in ipairs({ "fds", "pid", "children", "threads", "shm_live", "eventually", "snapshot", "check",
                            "fresh", "sh", "searchpath", "interpreter", "no_leaks" }) do
      assert.is_function(T[name], name)
      assert.is_function(H[name], name)
    end
    assert.are.equal(H, require "helper")
    assert.is_nil(rawget(_G, "H"))  -- the helper sets no global: each spec requires it
    assert.are_not.equal(T, H)     -- the project's H is a copy: specs may add to it
  end)

  it("check() names what a test left behind", function()
    local before = T.snapshot()
    local p = assert(require("procthread").pipe())
    local ok, err = pcall(T.check, before)
    p:close()
    assert.is_false(ok)
    assert.matches("leak after test: fds %d+ %-> %d+", err)
    T.check(before)
  end)

  it("works from a user's own spec with the README's .busted", function()
    local dir = assert(H.tmpdir())
    local f = assert(io.open(dir .. "/.busted", "w"))
    f:write(([[
return {
  default = {
    lua = %q,
    lpath = %q,
    cpath = %q,
    ROOT = { "spec" },
  },
}
]]):format(LUA, LUADIR .. "/?.lua;" .. LUADIR .. "/?/init.lua;./?.lua", SODIR .. "/?.so"))
    f:close()
    os.execute("mkdir " .. dir .. "/spec")
    f = assert(io.open(dir .. "/spec/pool_spec.lua", "w")); f:write(USER_SPEC); f:close()
    -- a LUA_PATH for another Lua must not get in the way: busted is told
    -- the paths in .busted
    local status, out = sh(("cd %s && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_2 -u LUA_PATH_5_3 -u LUA_PATH_5_4 "
      .. "-u LUA_CPATH_5_2 -u LUA_CPATH_5_3 -u LUA_CPATH_5_4 timeout 120 busted -o utfTerminal"):format(q(dir)))
    H.rmdir(dir)
    out = out:gsub("\27%[[%d;]*m", "")
    assert.are.equal(1, status, out)
    assert.matches("3 successes / 0 failures / 1 error / 1 pending", out, 1, true)
    assert.matches("leak after test 'forgets a pipe': fds %d+ %-> %d+", out)
    -- the pending test is reported where it is, not at "(tail call) @ -1"
    assert.is_nil(out:find("(tail call)", 1, true), out)
    assert.is_nil(out:find("busted:%d"), out)
    assert.matches("Pending → [^\n]*spec/pool_spec.lua @ %d+", out)
  end)
end)
