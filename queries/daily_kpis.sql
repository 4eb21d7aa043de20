-- name: Daily KPIs
-- description: Per day of dropoff (UTC), over completed trips: how many trips, and the total, smallest, largest and average fare, rounded to cents.
SELECT
    trip_date,
    COUNT(*) AS total_trips,
    CAST(ROUND(SUM(CAST(fare_amount AS DECIMAL(76, 18))), 2) AS DECIMAL(38, 2)) AS total_fare,
    CAST(ROUND(MIN(fare_amount), 2) AS DECIMAL(38, 2)) AS min_fare,
    CAST(ROUND(MAX(fare_amount), 2) AS DECIMAL(38, 2)) AS max_fare,
    CAST(ROUND(AVG(CAST(fare_amount AS DECIMAL(76, 18))), 2) AS DECIMAL(38, 2)) AS avg_fare
FROM trips
WHERE trip_completed
GROUP BY trip_date
ORDER BY trip_date
