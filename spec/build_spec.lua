-- The rockspec must build what the checkout has: every C file of src/ and
-- every Lua module of lua/procthread/ (luarocks' builtin type lists them).
local H = require "helper"

local function lines(cmd)
  local t = {}
  local p = io.popen(cmd)
  for l in p:lines() do t[#t + 1] = l end
  p:close()
  return t
end

describe("procthread-scm-1.rockspec", function()
  H.no_leaks()
  local spec = {}
  local chunk = assert((loadfile)("procthread-scm-1.rockspec", "t", spec) or loadfile("procthread-scm-1.rockspec"))
  if setfenv then setfenv(chunk, spec) end
  chunk()
  local mods = spec.build.modules

  it("compiles every C file of src/", function()
    local listed = {}
    for _, f in ipairs(mods["procthread.core"].sources) do listed[f] = true end
    for _, f in ipairs(lines("ls src/*.c")) do
      assert.is_true(listed[f] == true, f .. " is not in the rockspec")
    end
  end)

  it("installs every Lua module under its name", function()
    for _, f in ipairs(lines("find lua/procthread -name '*.lua' | sort")) do
      local name = f:gsub("^lua/", ""):gsub("%.lua$", ""):gsub("/init$", ""):gsub("/", ".")
      assert.are.equal(f, mods[name], name .. " is not installed by the rockspec")
    end
  end)

  it("installs the lab's command line as a Lua script (luarocks wraps it for the rock's Lua)", function()
    local bin = spec.build.install.bin["procthread-lab"]
    assert.are.equal("bin/procthread-lab.lua", bin)
    assert.is_truthy(loadfile(bin), bin .. " is not Lua: luarocks would not wrap it")
  end)
end)

-- The rock as a user installs it: built offline (no network namespace when
-- unshare allows) into a tree of its own, for Lua 5.1 only, with lua5.4
-- first on PATH; its procthread-lab must run on 5.1.
describe("the rock", function()
  H.no_leaks()
  local tree, out
  before_each(function()
    tree = H.tmpdir()
    out = tree .. "/report"
  end)
  after_each(function() H.rmdir(tree) end)

  it("builds offline, and its procthread-lab runs on the Lua the rock was built for", function()
    local offline = os.execute("unshare -n true 2>/dev/null") and "unshare -n " or ""
    if type(offline) ~= "string" then offline = "" end
    local log = table.concat(lines(("%sluarocks --lua-version=5.1 make --tree=%s procthread-scm-1.rockspec 2>&1; echo status=$?")
      :format(offline, tree)), "\n")
    assert.matches("status=0", log)
    local run = table.concat(lines(("mkdir %s/path && ln -s \"$(command -v lua5.4)\" %s/path/lua && "
      .. "env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 PATH=%s/path:$PATH "
      .. "%s/bin/procthread-lab run spec/fixtures/my_experiment.lua --tiny --quiet --out %s 2>&1; echo status=$?")
      :format(tree, tree, tree, tree, out)), "\n")
    assert.matches("status=0", run)
    local f = assert(io.open(out .. "/results.json"))
    local results = f:read("*a"); f:close()
    assert.matches('"lua": *"Lua 5%.1"', results)
  end)
end)
