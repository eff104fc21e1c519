-- procthread.lab.svg: line charts as SVG text, drawn by the project.
--
-- chart(spec) -> svg string, where spec is
--   { title = "...", subtitle = "...",
--     x = { label = "...", unit = "B" | "s" | "MiB" | ..., log = bool, min, max },
--     y = { ... same ... },
--     series = { { name = "...", points = { {x=, y=, lo=, hi=}, ... },
--                  dash = bool, color = "#rrggbb", steps = bool, line = false }, ... },
--     markers = { { x =, name = "..." } },     -- dashed vertical lines
--     no_data = "...", no_data_reason = "..." }
-- lo/hi (optional) draw an error bar (the lab uses p10..p90); a point with
-- hollow = true is drawn as an open circle (the lab: a starved row).  A series
-- with steps = true holds each value up to the next point (a phase); one
-- with line = false draws its points only (its legend: an open circle).
-- Points with a missing or non-positive (log axis) value are skipped; a
-- point that is not { x = number, y = number ... } raises, naming its
-- series.  With no usable point (or spec.no_data set) the chart says
-- "no data: <reason>" instead of drawing empty axes.
-- The x axis is ticked at the measured x values when there are at most 12
-- (or at x.ticks = { ... } when given).
local format = require "procthread.lab.format"
local sig3, is_bytes = format.sig3, format.is_bytes

local M = {}

local W, H = 760, 440
local ML, MT, MB = 84, 56, 62

local palette = { "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f" }

local function esc(s)
  return (tostring(s):gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;"):gsub('"', "&quot;"))
end
M.escape = esc

local function log10(v) return math.log(v) / math.log(10) end

-- A round step (1, 2, 2.5 or 5 times a power of ten) that cuts `span`
-- into about `count` parts.
local function nice_step(span, count)
  local raw = span / count
  local mag = 10 ^ math.floor(log10(raw))
  local f = raw / mag
  local step
  if f <= 1 then step = 1 elseif f <= 2 then step = 2 elseif f <= 2.5 then step = 2.5
  elseif f <= 5 then step = 5 else step = 10 end
  return step * mag
end

-- Ticks for a linear axis: the list of values, and the (widened) range
-- lo, hi.
local function ticks_linear(lo, hi)
  if hi <= lo then hi = lo + 1 end
  local step = nice_step(hi - lo, 6)
  local a = math.floor(lo / step) * step
  local b = math.ceil(hi / step - 1e-9) * step
  local t = {}
  local v = a
  while v <= b + step * 1e-6 do
    t[#t + 1] = math.abs(v) < step * 1e-9 and 0 or v
    v = v + step
  end
  return t, a, b
end

-- Ticks at m x 10^k for a log axis spanning less than about two decades:
-- the finest mantissa set that gives at most 8 ticks.
local MANTISSAS = { { 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 }, { 1, 2, 3, 4, 5, 6, 8 }, { 1, 2, 5 }, { 1, 3 } }
local function ticks_log_fine(lo, hi)
  for _, set in ipairs(MANTISSAS) do
    local t = {}
    for k = math.floor(log10(lo)) - 1, math.ceil(log10(hi)) do
      for _, m in ipairs(set) do t[#t + 1] = m * 10 ^ k end
    end
    local a, b = 1, #t
    while a < #t and t[a + 1] <= lo * (1 + 1e-9) do a = a + 1 end
    while b > 1 and t[b - 1] >= hi * (1 - 1e-9) do b = b - 1 end
    if b - a + 1 <= 8 then
      local r = {}
      for i = a, b do r[#r + 1] = t[i] end
      return r, t[a], t[b]
    end
  end
end

local function ticks_log(lo, hi, unit)
  if not is_bytes(unit) and hi / lo < 100 then
    return ticks_log_fine(lo, hi)
  end
  local base = is_bytes(unit) and 2 or 10
  local lb = math.log(base)
  local a = math.floor(math.log(lo) / lb + 1e-9)
  local b = math.ceil(math.log(hi) / lb - 1e-9)
  if b <= a then b = a + 1 end
  local every = 1
  while (b - a) / every > 8 do every = every + 1 end
  if base == 2 then
    -- steps of 2^3 read best for sizes (8 B, 64 B, 512 B, 4 KiB...)
    if every > 1 and every < 3 then every = 3 end
  end
  if base == 2 then
    -- anchor at the top, so the largest size (often a round 1 MiB) is a tick
    a = b - math.ceil((b - a) / every) * every
  else
    a = math.floor(a / every) * every
    b = math.ceil(b / every) * every
  end
  local t = {}
  for e = a, b, every do t[#t + 1] = base ^ e end
  return t, base ^ a, base ^ b
end

-- A value an axis can place: a number, not NaN or infinite, and above 0 on
-- a log axis.  (An infinite one made a log axis's tick loop run for ever.)
local function placeable(v, log)
  return v == v and v ~= math.huge and v ~= -math.huge and (not log or v > 0)
end

-- The distinct values of a list, sorted, when there are 2 to 12 of them.
local function distinct(values, log)
  local seen, t = {}, {}
  for _, v in ipairs(values) do
    if placeable(v, log) and not seen[v] then seen[v] = true; t[#t + 1] = v end
  end
  if #t < 2 or #t > 12 then return nil end
  table.sort(t)
  return t
end

local function axis(spec, values, headroom, at_data)
  local lo, hi = spec.min, spec.max
  for _, v in ipairs(values) do
    if placeable(v, spec.log) then
      if not lo or v < lo then lo = v end
      if not hi or v > hi then hi = v end
    end
  end
  if not lo then lo, hi = spec.log and 1 or 0, spec.log and 10 or 1 end
  local ticks
  local fmt_tick
  if spec.log then
    ticks, lo, hi = ticks_log(lo, hi, spec.unit)
  else
    if spec.zero ~= false and lo > 0 then lo = 0 end
    if headroom and not spec.max then hi = hi + (hi - lo) * 0.04 end   -- a line along the top stays visible
    -- nice ticks in the display unit (0, 0.5, 1, 1.5 MiB; not 500 KiB, 1000 KiB)
    local f, suffix = format.scale(spec.unit, math.max(math.abs(lo), math.abs(hi)))
    ticks, lo, hi = ticks_linear(lo / f, hi / f)
    for i, t in ipairs(ticks) do ticks[i] = t * f end
    lo, hi = lo * f, hi * f
    fmt_tick = function(v) return v == 0 and "0" or sig3(v / f) .. suffix end
  end
  -- the ticks the spec names, else the measured values (8 B, 64 B ...
  -- 1 MiB), inside the range; a linear axis then ends at the last one
  local data = type(spec.ticks) == "table" and spec.ticks or at_data and distinct(values, spec.log)
  if data then
    if not spec.log and not spec.max and data[#data] > lo then hi = data[#data] end
    ticks = {}
    for _, v in ipairs(data) do if v >= lo and v <= hi then ticks[#ticks + 1] = v end end
    if not spec.log then
      local f, suffix = format.scale(spec.unit, math.max(math.abs(lo), math.abs(hi)))
      fmt_tick = function(v) return v == 0 and "0" or sig3(v / f) .. suffix end
    end
  end
  return { lo = lo, hi = hi, ticks = ticks, log = spec.log, unit = spec.unit, label = spec.label, fmt = fmt_tick }
end

local function project(ax, v, a, b)
  local f
  if ax.log then
    f = (math.log(v) - math.log(ax.lo)) / (math.log(ax.hi) - math.log(ax.lo))
  else
    f = (v - ax.lo) / (ax.hi - ax.lo)
  end
  return a + f * (b - a)
end

local function n2(v) return ("%.1f"):format(v) end

local function usable(ax, v)
  return type(v) == "number" and placeable(v, ax.log)
end

-- Raise unless every point of every series is { x = number, y = number }
-- (y may be missing: a failed measurement), naming the series.
local function check_series(spec)
  for i, s in ipairs(spec.series or {}) do
    local name = ("series %d%s"):format(i, type(s) == "table" and s.name and (" (" .. tostring(s.name) .. ")") or "")
    if type(s) ~= "table" or type(s.points or {}) ~= "table" then
      error(("chart '%s': %s is not a table with points"):format(tostring(spec.title), name), 0)
    end
    for j, p in ipairs(s.points or {}) do
      if type(p) ~= "table" or p[1] ~= nil or type(p.x) ~= "number"
         or (p.y ~= nil and type(p.y) ~= "number") then
        error(("chart '%s': %s, point %d is not { x = number, y = number, lo =, hi = }")
          :format(tostring(spec.title), name, j), 0)
      end
    end
  end
end

-- The points of s usable on both axes, sorted by x.
local function usable_points(s, xa, ya)
  local pts = {}
  for _, p in ipairs(s.points or {}) do
    if usable(xa, p.x) and usable(ya, p.y) then pts[#pts + 1] = p end
  end
  table.sort(pts, function(a, b) return a.x < b.x end)
  return pts
end

-- The polyline of a series: through the points, or as steps that hold
-- each value from halfway to the previous point to halfway to the next.
local function line_coords(pts, steps, px, py)
  local c = {}
  local function at(x, y) c[#c + 1] = n2(px(x)) .. "," .. n2(py(y)) end
  for i, p in ipairs(pts) do
    if steps then
      local prev, nxt = pts[i - 1], pts[i + 1]
      local half_l = prev and (p.x - prev.x) / 2 or (nxt and (nxt.x - p.x) / 2 or 0)
      local half_r = nxt and (nxt.x - p.x) / 2 or half_l
      at(p.x - half_l, p.y); at(p.x + half_r, p.y)
    else
      at(p.x, p.y)
    end
  end
  return c
end

local function legend_width(spec)
  local longest = #(spec.note or "") * 0.85
  for _, s in ipairs(spec.series or {}) do longest = math.max(longest, #tostring(s.name or "series 10")) end
  for _, m in ipairs(spec.markers or {}) do longest = math.max(longest, #tostring(m.name or "")) end
  return math.min(360, 46 + math.floor(longest * 7) + 12)
end

local function header(o, spec)
  o[#o + 1] = ('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="DejaVu Sans, Arial, sans-serif">'):format(W, H, W, H)
  o[#o + 1] = ('<rect x="0" y="0" width="%d" height="%d" fill="#ffffff"/>'):format(W, H)
  o[#o + 1] = ('<text x="%d" y="24" font-size="16" font-weight="bold">%s</text>'):format(ML, esc(spec.title or ""))
  if spec.subtitle then
    o[#o + 1] = ('<text x="%d" y="42" font-size="12" fill="#555555">%s</text>'):format(ML, esc(spec.subtitle))
  end
end

-- A chart that has nothing to draw says so, in the place of the plot.
local function no_data_chart(spec, reason)
  local o = {}
  header(o, spec)
  o[#o + 1] = ('<rect x="%d" y="%d" width="%d" height="%d" fill="#f6f6f6" stroke="#bbbbbb"/>'):format(ML, MT, W - ML - 40, H - MT - MB)
  o[#o + 1] = ('<text x="%d" y="%d" font-size="14" text-anchor="middle" fill="#333333">%s</text>')
    :format(math.floor((ML + W - 40) / 2), math.floor((MT + H - MB) / 2), esc("no data: " .. reason))
  o[#o + 1] = "</svg>"
  return table.concat(o, "\n") .. "\n"
end

function M.chart(spec)
  check_series(spec)
  if spec.no_data then return no_data_chart(spec, spec.no_data) end
  local xs, ys = {}, {}
  for _, s in ipairs(spec.series or {}) do
    for _, p in ipairs(s.points or {}) do
      if type(p.y) == "number" then
        xs[#xs + 1] = p.x; ys[#ys + 1] = p.y
        if type(p.lo) == "number" then ys[#ys + 1] = p.lo end
        if type(p.hi) == "number" then ys[#ys + 1] = p.hi end
      end
    end
  end
  local xa, ya = axis(spec.x or {}, xs, false, true), axis(spec.y or {}, ys, true)
  local series, any = {}, false
  for i, s in ipairs(spec.series or {}) do
    series[i] = usable_points(s, xa, ya)
    any = any or #series[i] > 0
  end
  if not any then
    return no_data_chart(spec, spec.no_data_reason or "no series has a point to draw")
  end
  local x0, x1, y0, y1 = ML, W - legend_width(spec), H - MB, MT
  local function px(v) return project(xa, v, x0, x1) end
  local function py(v) return project(ya, v, y0, y1) end
  local o = {}
  local function add(s) o[#o + 1] = s end
  header(o, spec)
  -- grid and ticks; an x label that would overlap the previous one is left out
  add('<g font-size="11" fill="#333333">')
  local last_label
  for _, t in ipairs(xa.ticks) do
    local x = px(t)
    add(('<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="#e4e4e4"/>'):format(n2(x), y1, n2(x), y0))
    add(('<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="#333333"/>'):format(n2(x), y0, n2(x), y0 + 5))
    local text = xa.fmt and xa.fmt(t) or format.value(t, xa.unit)
    if not last_label or x - last_label >= 7 * #text then
      add(('<text x="%s" y="%d" text-anchor="middle">%s</text>'):format(n2(x), y0 + 18, esc(text)))
      last_label = x
    end
  end
  for _, t in ipairs(ya.ticks) do
    local y = py(t)
    add(('<line x1="%d" y1="%s" x2="%d" y2="%s" stroke="#e4e4e4"/>'):format(x0, n2(y), x1, n2(y)))
    add(('<line x1="%d" y1="%s" x2="%d" y2="%s" stroke="#333333"/>'):format(x0 - 5, n2(y), x0, n2(y)))
    add(('<text x="%d" y="%s" text-anchor="end">%s</text>'):format(x0 - 8, n2(y + 4), esc(ya.fmt and ya.fmt(t) or format.value(t, ya.unit))))
  end
  add('</g>')
  add(('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#333333"/>'):format(x0, y1, x1 - x0, y0 - y1))
  -- axis labels
  local xl = (xa.label or "") .. (xa.log and " (log scale)" or "")
  local yl = (ya.label or "") .. (ya.log and " (log scale)" or "")
  add(('<text x="%s" y="%d" font-size="13" text-anchor="middle">%s</text>'):format(n2((x0 + x1) / 2), H - 16, esc(xl)))
  add(('<text transform="translate(18,%s) rotate(-90)" font-size="13" text-anchor="middle">%s</text>'):format(n2((y0 + y1) / 2), esc(yl)))
  -- series
  local ly = y1 + 8
  local function legend(name, color, dash, points_only)
    if points_only then
      add(('<circle cx="%d" cy="%d" r="4.5" fill="#ffffff" stroke="%s" stroke-width="2"/>'):format(x1 + 27, ly + 6, color))
    else
      add(('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"%s/>'):format(x1 + 14, ly + 6, x1 + 40, ly + 6, color, dash))
    end
    add(('<text x="%d" y="%d" font-size="12">%s</text>'):format(x1 + 46, ly + 10, esc(name)))
    ly = ly + 20
  end
  for i, s in ipairs(spec.series or {}) do
    local color = s.color or palette[(i - 1) % #palette + 1]
    local dash = s.dash and ' stroke-dasharray="6,4"' or ""
    local pts = series[i]
    if s.line ~= false and (#pts > 1 or (s.steps and #pts > 0)) then
      add(('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>'):format(color, dash,
        table.concat(line_coords(pts, s.steps, px, py), " ")))
    end
    for _, p in ipairs(pts) do
      local x, y = px(p.x), py(p.y)
      if usable(ya, p.lo) and usable(ya, p.hi) then
        local a, b = py(p.lo), py(p.hi)
        add(('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="1.2"/>'):format(n2(x), n2(a), n2(x), n2(b), color))
        add(('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="1.2"/>'):format(n2(x - 3), n2(a), n2(x + 3), n2(a), color))
        add(('<line x1="%s" y1="%s" x2="%s" y2="%s" stroke="%s" stroke-width="1.2"/>'):format(n2(x - 3), n2(b), n2(x + 3), n2(b), color))
      end
      if p.hollow then
        add(('<circle cx="%s" cy="%s" r="4.5" fill="#ffffff" stroke="%s" stroke-width="2"/>'):format(n2(x), n2(y), color))
      elseif not s.no_markers then
        add(('<circle cx="%s" cy="%s" r="3.5" fill="%s"/>'):format(n2(x), n2(y), color))
      end
    end
    legend(s.name or ("series " .. i), color, dash, s.line == false)
  end
  -- markers: dashed vertical lines from the bottom of the plot to its top
  for _, m in ipairs(spec.markers or {}) do
    if usable(xa, m.x) and m.x >= xa.lo and m.x <= xa.hi then
      local x = n2(px(m.x))
      add(('<line x1="%s" y1="%d" x2="%s" y2="%d" stroke="#777777" stroke-width="2" stroke-dasharray="6,4"/>'):format(x, y0, x, y1))
      if m.name then legend(m.name, "#777777", ' stroke-dasharray="6,4"') end
    end
  end
  if spec.note then
    add(('<text x="%d" y="%d" font-size="11" fill="#555555">%s</text>'):format(x1 + 14, ly + 12, esc(spec.note)))
  end
  add('</svg>')
  return table.concat(o, "\n") .. "\n"
end

return M
