-- name: Trips by hour of pickup
-- description: Per day of dropoff and hour of pickup (UTC), over completed trips: trips and average fare, rounded to cents.
SELECT
    trip_date,
    CAST(date_part('hour', pickup_datetime) AS BIGINT) AS pickup_hour,
    COUNT(*) AS trips,
    CAST(ROUND(AVG(CAST(fare_amount AS DECIMAL(76, 18))), 2) AS DECIMAL(38, 2)) AS avg_fare
FROM trips
WHERE trip_completed
GROUP BY trip_date, CAST(date_part('hour', pickup_datetime) AS BIGINT)
ORDER BY trip_date, pickup_hour
