-- procthread.lab.stats: order statistics of a list of samples.
local M = {}

local function sorted_numbers(xs)
  local s = {}
  for i = 1, #xs do
    local v = xs[i]
    if type(v) == "number" and v == v then s[#s + 1] = v end
  end
  table.sort(s)
  return s
end

-- Quantile q (0..1) of an already sorted list, linear interpolation between
-- the closest ranks (type 7, as R and NumPy do by default).
function M.quantile_sorted(s, q)
  local n = #s
  if n == 0 then return nil end
  if n == 1 then return s[1] end
  local h = (n - 1) * q + 1
  local lo = math.floor(h)
  local hi = math.min(lo + 1, n)
  return s[lo] + (h - lo) * (s[hi] - s[lo])
end

function M.quantile(xs, q) return M.quantile_sorted(sorted_numbers(xs), q) end
function M.median(xs) return M.quantile(xs, 0.5) end

function M.mean(xs)
  local s, n = 0, 0
  for i = 1, #xs do if type(xs[i]) == "number" then s = s + xs[i]; n = n + 1 end end
  if n == 0 then return nil end
  return s / n
end

-- Summary of samples: n, failed, median, min, max, p10, p90, mean.
-- `failed` is copied from the argument (the count of samples that did not
-- produce a number).
function M.summary(xs, failed)
  local s = sorted_numbers(xs or {})
  local r = { n = #s, failed = failed or 0 }
  if #s > 0 then
    r.median = M.quantile_sorted(s, 0.5)
    r.min, r.max = s[1], s[#s]
    r.p10 = M.quantile_sorted(s, 0.1)
    r.p90 = M.quantile_sorted(s, 0.9)
    r.mean = M.mean(s)
  end
  return r
end

-- The noise rule: compare summary a with `margin` times summary b by their
-- spreads (p10 – p90).  "above" when a's spread lies wholly above margin x
-- b's, "below" when wholly below, "within noise" when they overlap (or a
-- side has no sample: nil).  A condition is stated only from "above" and
-- "below"; "within noise" is never a win.
function M.versus(a, b, margin)
  if not (a and b and a.p10 and b.p10) then return nil end
  margin = margin or 1
  if a.p10 > margin * b.p90 then return "above" end
  if a.p90 < margin * b.p10 then return "below" end
  return "within noise"
end

-- Linear interpolation: the x at which the line through (x1,y1), (x2,y2)
-- reaches y.
function M.cross(x1, y1, x2, y2, y)
  if y2 == y1 then return x1 end
  return x1 + (y - y1) * (x2 - x1) / (y2 - y1)
end

return M
